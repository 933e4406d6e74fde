//! Listing a workspace directory for a client, flat, recursive or as an ASCII tree, with the
//! semantics of the `list_files` tool of python-mcp-server 0.6.2, and the snapshot of files used
//! to see what a cell created. Directories are opened beneath the root through `resolve.rs`; a
//! symlink is listed as a file and never followed into. Walks are bounded in entries, entries
//! visited and depth, since kernel code can fill a workspace with anything. It must not read,
//! write or delete any file.

use std::os::fd::OwnedFd;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};

use super::path::RelPath;
use super::resolve::{file_type, open_beneath, open_dir_beneath};
use super::{Workspace, WorkspaceError, kind_name};

/// Entries a listing holds at most.
const MAX_ENTRIES: usize = 10_000;

/// Directory entries a walk looks at, listed or not, before it stops.
const MAX_VISITED: usize = 100_000;

/// Directory levels a walk goes down at most, whatever `max_depth` says.
const MAX_WALK_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOptions {
    /// List every descendant rather than the direct children (flat listings only).
    pub recursive: bool,
    /// Render an ASCII tree rather than a list of paths.
    pub tree: bool,
    /// Levels below `path` to list, 1 being its children; `None` for no limit. A flat listing
    /// that is not recursive lists the children only, whatever this says.
    pub max_depth: Option<usize>,
    /// List files (and symlinks).
    pub include_files: bool,
    /// List directories.
    pub include_dirs: bool,
}

/// A listing; `root` is the listed path, workspace-relative (`.` for the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    /// Workspace-relative paths, sorted.
    Flat {
        root: String,
        files: Vec<String>,
        /// Whether entries were left out to stay within the limits.
        truncated: bool,
    },
    /// An ASCII tree like the `tree` command's, directories suffixed with `/`.
    Tree {
        root: String,
        tree: String,
        /// Whether entries were left out to stay within the limits.
        truncated: bool,
    },
}

impl Workspace {
    /// Lists `path` (`None`, `""` or `.` for the root) as `options` say. Flat listings hold the
    /// children of `path` (or every descendant up to `max_depth` when recursive) as sorted
    /// workspace-relative paths; a tree starts with the name of `path` (`.` for the root) and
    /// lists directories first. A tree of a file is its name. At most 10,000 entries.
    pub fn list(
        &self,
        path: Option<&str>,
        options: &ListOptions,
    ) -> Result<Listing, WorkspaceError> {
        let rel = match path {
            Some(path) if !path.trim().is_empty() => RelPath::parse(path)?,
            _ => RelPath::root(),
        };
        let root = self.open_root()?;
        let resolving = |errno| WorkspaceError::resolving(errno, rel.as_str(), "list");
        let dir = open_beneath(&root, rel.as_str(), OFlags::PATH).map_err(resolving)?;
        let name = rel.split_last().map_or(".", |(_, name)| name);
        match file_type(&dir).map_err(WorkspaceError::io("list", rel.as_str()))? {
            FileType::Directory => {}
            _ if options.tree => {
                return Ok(Listing::Tree {
                    root: rel.to_string(),
                    tree: name.to_string(),
                    truncated: false,
                });
            }
            FileType::Symlink => {
                return Err(WorkspaceError::Symlink {
                    path: rel.to_string(),
                });
            }
            other => {
                return Err(WorkspaceError::NotADirectory {
                    path: rel.to_string(),
                    kind: kind_name(other),
                });
            }
        }
        let mut walk = Walk::new(MAX_ENTRIES, options);
        if options.tree {
            let mut lines = vec![if rel.is_root() {
                ".".to_string()
            } else {
                format!("{name}/")
            }];
            walk.draw(&dir, "", 1, &mut lines);
            Ok(Listing::Tree {
                root: rel.to_string(),
                tree: lines.join("\n"),
                truncated: walk.truncated,
            })
        } else {
            let prefix = if rel.is_root() { "" } else { rel.as_str() };
            let mut files = Vec::new();
            walk.collect(&dir, prefix, 1, &mut files);
            files.sort();
            Ok(Listing::Flat {
                root: rel.to_string(),
                files,
                truncated: walk.truncated,
            })
        }
    }
}

/// Workspace-relative paths of the files and symlinks beneath `root`, at most `limit`.
pub(super) fn files(root: &OwnedFd, limit: usize) -> Vec<String> {
    let options = ListOptions {
        recursive: true,
        tree: false,
        max_depth: None,
        include_files: true,
        include_dirs: false,
    };
    let mut files = Vec::new();
    Walk::new(limit, &options).collect(root, "", 1, &mut files);
    files
}

/// How a listing sees a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Directory,
    /// A regular file or a symlink, whatever it points to.
    File,
}

/// One walk of a directory tree and what it may still do.
struct Walk {
    entries_left: usize,
    visits_left: usize,
    include_files: bool,
    include_dirs: bool,
    max_depth: Option<usize>,
    truncated: bool,
}

impl Walk {
    /// A walk listing at most `limit` entries. A flat listing that is not recursive lists
    /// only the children of the listed path.
    fn new(limit: usize, options: &ListOptions) -> Self {
        Self {
            entries_left: limit,
            visits_left: MAX_VISITED,
            include_files: options.include_files,
            include_dirs: options.include_dirs,
            max_depth: if options.tree || options.recursive {
                options.max_depth
            } else {
                Some(1)
            },
            truncated: false,
        }
    }

    fn includes(&self, kind: Kind) -> bool {
        match kind {
            Kind::Directory => self.include_dirs,
            Kind::File => self.include_files,
        }
    }

    /// Counts one more listed entry; false (and truncated) when the listing is full.
    fn take_entry(&mut self) -> bool {
        if self.entries_left == 0 {
            self.truncated = true;
            return false;
        }
        self.entries_left -= 1;
        true
    }

    /// Whether entries `depth` levels below the listed path are listed. Past the walk's own
    /// depth limit they are not, and the listing is truncated.
    fn lists_depth(&mut self, depth: usize) -> bool {
        if self.max_depth.is_some_and(|max| depth > max) {
            return false;
        }
        if depth > MAX_WALK_DEPTH {
            self.truncated = true;
            return false;
        }
        true
    }

    /// Adds to `out` the included entries of `dir`, whose path is `prefix` and whose children
    /// are `depth` levels below the listed path, and those of its subdirectories.
    fn collect(&mut self, dir: &OwnedFd, prefix: &str, depth: usize, out: &mut Vec<String>) {
        if !self.lists_depth(depth) {
            return;
        }
        for (name, kind) in self.entries(dir) {
            if self.truncated {
                return;
            }
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if self.includes(kind) {
                if !self.take_entry() {
                    return;
                }
                out.push(path.clone());
            }
            if kind == Kind::Directory
                && let Ok(child) = open_dir_beneath(dir, &name)
            {
                self.collect(&child, &path, depth + 1, out);
            }
        }
    }

    /// Adds to `lines` the tree lines of the included entries of `dir`, whose children are
    /// `depth` levels below the listed path, each line starting with `prefix`.
    fn draw(&mut self, dir: &OwnedFd, prefix: &str, depth: usize, lines: &mut Vec<String>) {
        if !self.lists_depth(depth) {
            return;
        }
        let mut children: Vec<(String, Kind)> = self
            .entries(dir)
            .into_iter()
            .filter(|(_, kind)| self.includes(*kind))
            .collect();
        children.sort_by_cached_key(|(name, kind)| {
            (*kind == Kind::File, name.to_lowercase(), name.clone())
        });
        let count = children.len();
        for (index, (name, kind)) in children.into_iter().enumerate() {
            if !self.take_entry() {
                return;
            }
            let last = index + 1 == count;
            let branch = if last { "└── " } else { "├── " };
            let suffix = if kind == Kind::Directory { "/" } else { "" };
            lines.push(format!("{prefix}{branch}{name}{suffix}"));
            if kind == Kind::Directory
                && let Ok(child) = open_dir_beneath(dir, &name)
            {
                let indent = if last { "    " } else { "│   " };
                self.draw(&child, &format!("{prefix}{indent}"), depth + 1, lines);
            }
        }
    }

    /// The directories, regular files and symlinks in `dir`, sorted by name. Names that are
    /// not UTF-8 are shown lossily.
    fn entries(&mut self, dir: &OwnedFd) -> Vec<(String, Kind)> {
        let Ok(readable) = rustix::fs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return Vec::new();
        };
        let Ok(listing) = Dir::new(readable) else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for entry in listing.flatten() {
            if self.visits_left == 0 {
                self.truncated = true;
                break;
            }
            self.visits_left -= 1;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            let file_type = match entry.file_type() {
                FileType::Unknown => {
                    match rustix::fs::statat(dir, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                        Err(_) => continue,
                    }
                }
                known => known,
            };
            match file_type {
                FileType::Directory => entries.push((name, Kind::Directory)),
                FileType::RegularFile | FileType::Symlink => entries.push((name, Kind::File)),
                _ => {}
            }
        }
        entries.sort_by(|(a, _), (b, _)| a.cmp(b));
        entries
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::{MAX_ENTRIES, MAX_WALK_DEPTH, files};
    use crate::workspace::tests::{Fixture, fixture};
    use crate::workspace::{ListOptions, Listing, WorkspaceError};

    /// The layout below, with `link` a symlink to the host directory.
    ///
    /// ```text
    /// README.md  link  outputs/  scripts/a.py  scripts/lib/util.py  uploads/data.csv
    /// ```
    fn populated() -> Fixture {
        let fixture = fixture();
        for (path, content) in [
            ("README.md", "readme"),
            ("scripts/a.py", "print(1)"),
            ("scripts/lib/util.py", "pass"),
            ("uploads/data.csv", "a,b"),
        ] {
            fixture.ws.write(path, content.as_bytes(), 1024).unwrap();
        }
        symlink(&fixture.host, fixture.path("link")).unwrap();
        fixture
    }

    fn options() -> ListOptions {
        ListOptions {
            recursive: false,
            tree: false,
            max_depth: None,
            include_files: true,
            include_dirs: true,
        }
    }

    fn flat(fixture: &Fixture, path: Option<&str>, options: &ListOptions) -> (String, Vec<String>) {
        match fixture.ws.list(path, options).unwrap() {
            Listing::Flat {
                root,
                files,
                truncated: false,
            } => (root, files),
            other => panic!("expected a complete flat listing, got {other:?}"),
        }
    }

    fn tree(fixture: &Fixture, path: Option<&str>, options: &ListOptions) -> (String, String) {
        let options = ListOptions {
            tree: true,
            ..options.clone()
        };
        match fixture.ws.list(path, &options).unwrap() {
            Listing::Tree {
                root,
                tree,
                truncated: false,
            } => (root, tree),
            other => panic!("expected a complete tree, got {other:?}"),
        }
    }

    #[test]
    fn list_flat_gives_the_direct_children_as_workspace_relative_paths() {
        let fixture = populated();
        let root_listing = (
            ".".to_string(),
            vec!["README.md", "link", "outputs", "scripts", "uploads"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
        );
        for path in [None, Some(""), Some("."), Some("./")] {
            assert_eq!(flat(&fixture, path, &options()), root_listing, "{path:?}");
        }
        assert_eq!(
            flat(&fixture, Some("scripts/"), &options()),
            (
                "scripts".to_string(),
                vec!["scripts/a.py".to_string(), "scripts/lib".to_string()]
            )
        );
    }

    #[test]
    fn list_recursive_honours_max_depth() {
        let fixture = populated();
        let recursive = |max_depth| ListOptions {
            recursive: true,
            max_depth,
            ..options()
        };
        assert_eq!(
            flat(&fixture, None, &recursive(Some(0))).1,
            Vec::<String>::new()
        );
        assert_eq!(
            flat(&fixture, None, &recursive(Some(1))),
            flat(&fixture, None, &options())
        );
        assert_eq!(
            flat(&fixture, None, &recursive(Some(2))).1,
            [
                "README.md",
                "link",
                "outputs",
                "scripts",
                "scripts/a.py",
                "scripts/lib",
                "uploads",
                "uploads/data.csv",
            ]
        );
        assert!(
            flat(&fixture, None, &recursive(None))
                .1
                .contains(&"scripts/lib/util.py".to_string())
        );
        assert_eq!(
            flat(&fixture, Some("scripts"), &recursive(Some(1))).1,
            ["scripts/a.py", "scripts/lib"]
        );
        assert_eq!(
            flat(&fixture, Some("scripts"), &recursive(Some(2))).1,
            ["scripts/a.py", "scripts/lib", "scripts/lib/util.py"]
        );
    }

    #[test]
    fn list_include_files_and_include_dirs_filter_entries() {
        let fixture = populated();
        let dirs_only = ListOptions {
            recursive: true,
            include_files: false,
            ..options()
        };
        assert_eq!(
            flat(&fixture, None, &dirs_only).1,
            ["outputs", "scripts", "scripts/lib", "uploads"]
        );
        let files_only = ListOptions {
            recursive: true,
            include_dirs: false,
            ..options()
        };
        assert_eq!(
            flat(&fixture, None, &files_only).1,
            [
                "README.md",
                "link",
                "scripts/a.py",
                "scripts/lib/util.py",
                "uploads/data.csv"
            ]
        );
    }

    #[test]
    fn list_tree_renders_like_the_tree_command() {
        let fixture = populated();
        let expected = "\
.
├── outputs/
├── scripts/
│   ├── lib/
│   │   └── util.py
│   └── a.py
├── uploads/
│   └── data.csv
├── link
└── README.md";
        assert_eq!(
            tree(&fixture, None, &options()),
            (".".to_string(), expected.to_string())
        );
    }

    #[test]
    fn list_tree_honours_max_depth_and_starts_a_subdirectory_with_its_name() {
        let fixture = populated();
        let shallow = ListOptions {
            max_depth: Some(1),
            ..options()
        };
        assert_eq!(
            tree(&fixture, Some("scripts"), &shallow),
            (
                "scripts".to_string(),
                "scripts/\n├── lib/\n└── a.py".to_string()
            )
        );
        let none = ListOptions {
            max_depth: Some(0),
            ..options()
        };
        assert_eq!(tree(&fixture, None, &none).1, ".");
    }

    #[test]
    fn list_tree_filters_files_or_directories() {
        let fixture = populated();
        let dirs_only = ListOptions {
            include_files: false,
            ..options()
        };
        assert_eq!(
            tree(&fixture, None, &dirs_only).1,
            ".\n├── outputs/\n├── scripts/\n│   └── lib/\n└── uploads/"
        );
        let files_only = ListOptions {
            include_dirs: false,
            ..options()
        };
        assert_eq!(
            tree(&fixture, None, &files_only).1,
            ".\n├── link\n└── README.md"
        );
    }

    #[test]
    fn list_tree_of_a_file_is_its_name() {
        let fixture = populated();
        assert_eq!(
            tree(&fixture, Some("scripts/lib/util.py"), &options()),
            ("scripts/lib/util.py".to_string(), "util.py".to_string())
        );
    }

    #[test]
    fn list_flat_of_a_file_is_refused() {
        let fixture = populated();
        assert!(matches!(
            fixture.ws.list(Some("README.md"), &options()),
            Err(WorkspaceError::NotADirectory {
                kind: "regular file",
                ..
            })
        ));
    }

    #[test]
    fn list_shows_a_symlinked_directory_as_a_file_and_refuses_to_list_into_it() {
        let fixture = populated();
        let everything = ListOptions {
            recursive: true,
            ..options()
        };
        let (_, files) = flat(&fixture, None, &everything);
        assert!(files.contains(&"link".to_string()));
        assert!(!files.iter().any(|file| file.starts_with("link/")));
        for path in ["link", "link/", "link/passwd"] {
            assert!(
                matches!(
                    fixture.ws.list(Some(path), &everything),
                    Err(WorkspaceError::Symlink { .. })
                ),
                "{path}"
            );
        }
        assert!(!tree(&fixture, None, &options()).1.contains("passwd"));
    }

    #[test]
    fn list_refuses_paths_that_leave_the_workspace() {
        let fixture = populated();
        for path in ["..", "../..", "scripts/../..", "/etc"] {
            assert!(
                matches!(
                    fixture.ws.list(Some(path), &options()),
                    Err(WorkspaceError::PathEscapes { .. })
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn list_caps_the_entries_and_says_it_truncated() {
        let fixture = fixture();
        let many = fixture.path("many");
        std::fs::create_dir(&many).unwrap();
        for index in 0..MAX_ENTRIES + 5 {
            std::fs::write(many.join(format!("{index:05}")), "").unwrap();
        }
        match fixture.ws.list(Some("many"), &options()).unwrap() {
            Listing::Flat {
                files, truncated, ..
            } => {
                assert_eq!(files.len(), MAX_ENTRIES);
                assert!(truncated);
            }
            other => panic!("expected a flat listing, got {other:?}"),
        }
        let tree_options = ListOptions {
            tree: true,
            ..options()
        };
        match fixture.ws.list(Some("many"), &tree_options).unwrap() {
            Listing::Tree {
                tree, truncated, ..
            } => {
                assert_eq!(tree.lines().count(), MAX_ENTRIES + 1);
                assert!(truncated);
            }
            other => panic!("expected a tree, got {other:?}"),
        }
    }

    #[test]
    fn list_stops_at_the_walk_depth_limit_and_says_it_truncated() {
        let fixture = fixture();
        let deep = "d/".repeat(MAX_WALK_DEPTH + 2);
        std::fs::create_dir_all(fixture.path(&deep)).unwrap();
        let everything = ListOptions {
            recursive: true,
            ..options()
        };
        match fixture.ws.list(Some("d"), &everything).unwrap() {
            Listing::Flat {
                files, truncated, ..
            } => {
                assert_eq!(files.len(), MAX_WALK_DEPTH);
                assert!(truncated);
            }
            other => panic!("expected a flat listing, got {other:?}"),
        }
    }

    #[test]
    fn files_lists_files_and_symlinks_only() {
        let fixture = populated();
        let root = super::super::open_dir(rustix::fs::CWD, fixture.ws.root()).unwrap();
        let mut found = files(&root, 100);
        found.sort();
        assert_eq!(
            found,
            [
                "README.md",
                "link",
                "scripts/a.py",
                "scripts/lib/util.py",
                "uploads/data.csv"
            ]
        );
        assert_eq!(files(&root, 2).len(), 2);
    }
}
