//! Workspace-relative paths as clients give them: validation (relative, no `..`, no NUL, at most
//! 4096 bytes) and normalization. It only looks at strings: it must not touch the filesystem,
//! and passing validation never means a path is safe to open any other way than beneath the
//! root (see `resolve.rs`).

use super::WorkspaceError;

/// The longest path accepted, in bytes (Linux's `PATH_MAX`).
const MAX_PATH_BYTES: usize = 4096;

/// A validated workspace-relative path: `.` for the root, otherwise names joined by `/`, none
/// of them empty, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RelPath(String);

impl RelPath {
    pub(super) fn root() -> Self {
        Self(".".to_string())
    }

    /// Validates a path a client gave; `.` (or `./`) is the root. `..` is refused outright
    /// rather than resolved, so no path can name anything above the root.
    pub(super) fn parse(path: &str) -> Result<Self, WorkspaceError> {
        let invalid = |reason| WorkspaceError::InvalidPath {
            path: path.to_string(),
            reason,
        };
        if path.trim().is_empty() {
            return Err(invalid(
                "it is empty; give a path relative to the workspace root, such as scripts/main.py",
            ));
        }
        if path.contains('\0') {
            return Err(invalid("it contains a NUL byte"));
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(invalid("it is longer than 4096 bytes"));
        }
        let escapes = || WorkspaceError::PathEscapes {
            path: path.to_string(),
        };
        if path.starts_with('/') {
            return Err(escapes());
        }
        let mut names = Vec::new();
        for name in path.split('/') {
            match name {
                "" | "." => {}
                ".." => return Err(escapes()),
                name => names.push(name),
            }
        }
        if names.is_empty() {
            Ok(Self::root())
        } else {
            Ok(Self(names.join("/")))
        }
    }

    /// The path as given to the resolver and shown to clients: `.` for the root.
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    pub(super) fn is_root(&self) -> bool {
        self.0 == "."
    }

    /// The parent directory (`.` for a top-level name) and the last name; `None` for the root.
    pub(super) fn split_last(&self) -> Option<(&str, &str)> {
        if self.is_root() {
            return None;
        }
        Some(self.0.rsplit_once('/').unwrap_or((".", &self.0)))
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(path: &str) -> String {
        RelPath::parse(path).unwrap().to_string()
    }

    #[test]
    fn parse_normalizes_dots_and_repeated_slashes() {
        assert_eq!(parsed("scripts/a.py"), "scripts/a.py");
        assert_eq!(parsed("./scripts//a.py/"), "scripts/a.py");
        assert_eq!(parsed("."), ".");
        assert_eq!(parsed("./"), ".");
    }

    #[test]
    fn parse_refuses_any_dot_dot_even_one_that_stays_inside() {
        for path in ["..", "../x", "a/../b", "a/..", "scripts/../../etc/passwd"] {
            assert!(
                matches!(
                    RelPath::parse(path),
                    Err(WorkspaceError::PathEscapes { .. })
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn parse_refuses_absolute_paths() {
        for path in ["/etc/passwd", "/workspace/scripts/a.py", "//x"] {
            assert!(
                matches!(
                    RelPath::parse(path),
                    Err(WorkspaceError::PathEscapes { .. })
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn parse_refuses_empty_nul_and_overlong_paths() {
        for path in ["", "  ", "a\0b", &"a".repeat(4097)] {
            assert!(
                matches!(
                    RelPath::parse(path),
                    Err(WorkspaceError::InvalidPath { .. })
                ),
                "{path:?}"
            );
        }
        assert!(RelPath::parse(&"a".repeat(4096)).is_ok());
    }

    #[test]
    fn split_last_gives_parent_and_name() {
        let path = RelPath::parse("a/b/c.txt").unwrap();
        assert_eq!(path.split_last(), Some(("a/b", "c.txt")));
        let path = RelPath::parse("c.txt").unwrap();
        assert_eq!(path.split_last(), Some((".", "c.txt")));
        assert_eq!(RelPath::root().split_last(), None);
    }
}
