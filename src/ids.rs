//! Names that become file names: session ids, and the plain-name rule that notebook ids and
//! tenant names follow too. Pure validation; nothing here reads, writes or starts anything, so
//! any module (records, sessions, the MCP layer) may use it without depending on `session`.

use serde::Serialize;

/// Whether `value` is 1 to 64 of `[A-Za-z0-9_-]`: the rule for session ids, notebook ids and
/// tenant names, all of which become file names.
pub fn is_plain_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A validated session id: 1 to 64 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct SessionId(String);

impl SessionId {
    pub const DEFAULT: &'static str = "default";
    pub const RULE: &'static str = "1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'";

    pub fn parse(value: &str) -> Result<Self, String> {
        if is_plain_name(value) {
            Ok(Self(value.to_string()))
        } else {
            let shown: String = value.chars().take(80).collect();
            Err(format!(
                "invalid session_id {shown:?}: a session id is {}",
                Self::RULE
            ))
        }
    }

    pub fn default_id() -> Self {
        Self(Self::DEFAULT.to_string())
    }

    pub fn generate() -> Self {
        Self(format!(
            "s-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_follow_the_rule() {
        for good in ["default", "a", "A-b_9", &"x".repeat(64)] {
            assert!(SessionId::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "../x", "a/b", "é", &"x".repeat(65), "a\0"] {
            let error = SessionId::parse(bad).unwrap_err();
            assert!(error.contains("invalid session_id"), "{error}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        assert!(SessionId::parse(a.as_str()).is_ok());
    }
}
