//! Who is calling over HTTP: bearer tokens from a tokens file, each naming a tenant and its
//! quotas, and the axum middleware that turns a request's token into a [`Tenant`] (or a 401).
//! Tokens are compared as SHA-256 digests in constant time and never logged or returned.
//! Without a tokens file every caller is the one local tenant.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::egress::Allowlist;
use crate::units::ByteSize;

/// The tenant of the server's own transports (stdio, or HTTP without authentication).
pub const LOCAL_TENANT: &str = "local";

/// A tenant and its quotas. Sessions belong to a tenant by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub name: String,
    /// Sessions the tenant may hold at once (the server's own cap applies too).
    pub max_sessions: Option<usize>,
    /// Memory per kernel; the server's `--memory` when lower.
    pub max_memory_bytes: Option<i64>,
    /// May create sessions with egress (when the server's policy allows it too).
    pub egress: bool,
    /// The widest `egress_allow` its sessions may have, within the server's; `None` leaves
    /// the server's.
    pub egress_allow: Option<Allowlist>,
    /// The templates its sessions may be made from; `None` allows every template.
    pub templates: Option<Vec<String>>,
}

impl Tenant {
    pub fn local() -> Self {
        Self {
            name: LOCAL_TENANT.to_string(),
            max_sessions: None,
            max_memory_bytes: None,
            egress: true,
            egress_allow: None,
            templates: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("could not read the tokens file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the tokens file {path} is not valid: {detail}")]
    Invalid { path: String, detail: String },
}

/// One entry of the tokens file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    /// The token itself, or
    #[serde(default)]
    token: Option<String>,
    /// its SHA-256 in hex, so the file need not hold the secret.
    #[serde(default)]
    token_sha256: Option<String>,
    tenant: String,
    #[serde(default)]
    max_sessions: Option<usize>,
    /// A size such as "512m" or "2g".
    #[serde(default)]
    max_memory: Option<String>,
    /// May create sessions with egress (default false).
    #[serde(default)]
    egress: bool,
    /// Narrows the server's `--egress-allow` for this tenant (default: not narrowed).
    #[serde(default)]
    egress_allow: Option<Allowlist>,
    /// The templates this tenant's sessions may use (default: every template).
    #[serde(default)]
    templates: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

/// The known tokens, by digest.
#[derive(Debug, Clone, Default)]
pub struct TokenStore {
    by_digest: HashMap<[u8; 32], Tenant>,
}

impl TokenStore {
    /// Reads a JSON tokens file: `{"tokens": [{"token": "...", "tenant": "acme",
    /// "max_sessions": 10, "max_memory": "2g"}]}` (`token_sha256` instead of `token` keeps the
    /// secret out of the file).
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|detail| AuthError::Invalid {
            path: shown,
            detail,
        })
    }

    fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.tokens.is_empty() {
            return Err("it lists no tokens".to_string());
        }
        let mut by_digest = HashMap::new();
        for (index, entry) in file.tokens.into_iter().enumerate() {
            let digest = match (&entry.token, &entry.token_sha256) {
                (Some(token), None) if token.len() >= 16 => Sha256::digest(token.as_bytes()).into(),
                (Some(_), None) => {
                    return Err(format!("token {index} is shorter than 16 characters"));
                }
                (None, Some(hex_digest)) => hex::decode(hex_digest)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| format!("token_sha256 {index} is not 64 hex digits"))?,
                _ => {
                    return Err(format!(
                        "token {index} needs exactly one of token and token_sha256"
                    ));
                }
            };
            if !crate::ids::is_plain_name(&entry.tenant) {
                return Err(format!("tenant {index} must be 1 to 64 of A-Z a-z 0-9 _ -"));
            }
            let max_memory_bytes = entry
                .max_memory
                .as_deref()
                .map(str::parse::<ByteSize>)
                .transpose()
                .map_err(|e| format!("max_memory of token {index}: {e}"))?
                .map(ByteSize::bytes);
            by_digest.insert(
                digest,
                Tenant {
                    name: entry.tenant,
                    max_sessions: entry.max_sessions,
                    max_memory_bytes,
                    egress: entry.egress,
                    egress_allow: entry.egress_allow,
                    templates: entry.templates,
                },
            );
        }
        Ok(Self { by_digest })
    }

    /// The tenant of a presented token.
    pub fn tenant(&self, token: &str) -> Option<&Tenant> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest
            .iter()
            .find(|(digest, _)| constant_time_eq(digest.as_slice(), &presented))
            .map(|(_, tenant)| tenant)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How HTTP callers are identified.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// Every caller is the local tenant.
    Disabled,
    Tokens(Arc<TokenStore>),
}

/// Middleware: puts the caller's [`Tenant`] in the request's extensions, or answers 401.
pub async fn identify(
    State(authentication): State<Authentication>,
    mut request: Request,
    next: Next,
) -> Response {
    let tenant = match &authentication {
        Authentication::Disabled => Some(Tenant::local()),
        Authentication::Tokens(store) => request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|token| store.tenant(token.trim()))
            .cloned(),
    };
    match tenant {
        Some(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(serde_json::json!({
                "error": "a valid bearer token is required: send Authorization: Bearer <token>"
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_tenants_with_quotas() {
        let digest = hex::encode(Sha256::digest(b"hashed-token-0123456789"));
        let store = TokenStore::parse(&format!(
            r#"{{"tokens": [
                {{"token": "plain-token-0123456789", "tenant": "acme", "max_sessions": 2, "max_memory": "512m"}},
                {{"token_sha256": "{digest}", "tenant": "globex"}}
            ]}}"#
        ))
        .unwrap();
        let acme = store.tenant("plain-token-0123456789").unwrap();
        assert_eq!(acme.name, "acme");
        assert_eq!(acme.max_sessions, Some(2));
        assert_eq!(acme.max_memory_bytes, Some(512 << 20));
        assert_eq!(
            store.tenant("hashed-token-0123456789").unwrap().name,
            "globex"
        );
        assert!(store.tenant("plain-token-012345678").is_none());
        assert!(store.tenant("").is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, reason) in [
            (r#"{"tokens": []}"#, "no tokens"),
            (
                r#"{"tokens": [{"token": "short", "tenant": "a"}]}"#,
                "shorter than 16",
            ),
            (r#"{"tokens": [{"tenant": "a"}]}"#, "exactly one"),
            (
                r#"{"tokens": [{"token": "0123456789abcdef", "tenant": "a b"}]}"#,
                "tenant 0",
            ),
            (
                r#"{"tokens": [{"token_sha256": "xyz", "tenant": "a"}]}"#,
                "64 hex",
            ),
            (
                r#"{"tokens": [{"token": "0123456789abcdef", "tenant": "a", "max_memory": "lots"}]}"#,
                "max_memory",
            ),
            (
                r#"{"tokens": [{"token": "0123456789abcdef", "tenant": "a", "admin": true}]}"#,
                "unknown field",
            ),
        ] {
            let error = TokenStore::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn debug_output_holds_digests_not_tokens() {
        let store = TokenStore::parse(
            r#"{"tokens": [{"token": "secret-token-0123456789", "tenant": "acme"}]}"#,
        )
        .unwrap();
        assert!(!format!("{store:?}").contains("secret-token"));
    }
}
