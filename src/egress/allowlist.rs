//! Egress patterns: what one session's kernel may reach through the egress proxy. A pattern
//! is a host name (`pypi.org`), a wildcard of its subdomains (`*.example.com`) or an IPv4
//! CIDR (`10.1.0.0/16`, or one address), each with an optional `:port` (80 and 443 when
//! none). Parsing is strict and every error names the pattern and what is allowed. Pure: no
//! resolving, no sockets.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The ports a pattern without `:port` allows.
const DEFAULT_PORTS: [u16; 2] = [80, 443];

/// Longest DNS name (RFC 1035), in characters without the trailing dot.
const MAX_NAME: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(
        "egress pattern {0:?} is not a host name (pypi.org), a wildcard of subdomains (*.example.com) or an IPv4 CIDR (10.0.0.0/8), each with an optional :port"
    )]
    Shape(String),
    #[error("egress pattern {0:?} has a port that is not 1 to 65535")]
    Port(String),
    #[error("egress pattern {0:?}: only IPv4 CIDRs are supported; name the host instead")]
    Ipv6(String),
    #[error(
        "egress pattern {0:?} matches every host; give the hosts, or create the session with egress: true"
    )]
    Everything(String),
    #[error("egress pattern {0:?} has a prefix length above 32")]
    Prefix(String),
}

/// Which hosts a pattern names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    /// One name, lower case, without a trailing dot.
    Name(String),
    /// Every name strictly below this one (`*.example.com` holds `example.com`).
    Below(String),
    /// IPv4 addresses: the network and its prefix length.
    Cidr { network: Ipv4Addr, prefix: u8 },
}

impl Hosts {
    fn parse(text: &str, pattern: &str) -> Result<Self, PatternError> {
        if text.contains(':') || text.starts_with('[') {
            return Err(PatternError::Ipv6(pattern.to_string()));
        }
        if let Some((address, prefix)) = text.split_once('/') {
            let address: Ipv4Addr = address
                .parse()
                .map_err(|_| PatternError::Shape(pattern.to_string()))?;
            let prefix: u8 = prefix
                .parse()
                .map_err(|_| PatternError::Shape(pattern.to_string()))?;
            if prefix > 32 {
                return Err(PatternError::Prefix(pattern.to_string()));
            }
            return Ok(Self::Cidr {
                network: Ipv4Addr::from(u32::from(address) & mask(prefix)),
                prefix,
            });
        }
        if let Ok(address) = text.parse::<Ipv4Addr>() {
            return Ok(Self::Cidr {
                network: address,
                prefix: 32,
            });
        }
        let name = text.trim_end_matches('.').to_ascii_lowercase();
        if name == "*" {
            return Err(PatternError::Everything(pattern.to_string()));
        }
        match name.strip_prefix("*.") {
            Some(suffix) if is_host_name(suffix) => Ok(Self::Below(suffix.to_string())),
            None if is_host_name(&name) => Ok(Self::Name(name)),
            _ => Err(PatternError::Shape(pattern.to_string())),
        }
    }

    /// Every host `other` names is one this names too.
    fn holds(&self, other: &Hosts) -> bool {
        match (self, other) {
            (Self::Name(a), Self::Name(b)) => a == b,
            (Self::Below(suffix), Self::Name(name)) => is_below(name, suffix),
            (Self::Below(a), Self::Below(b)) => a == b || is_below(b, a),
            (
                Self::Cidr { network, prefix },
                Self::Cidr {
                    network: inner,
                    prefix: inner_prefix,
                },
            ) => inner_prefix >= prefix && in_network(*inner, *network, *prefix),
            _ => false,
        }
    }

    fn names(&self, name: &str) -> bool {
        match self {
            Self::Name(own) => own == name,
            Self::Below(suffix) => is_below(name, suffix),
            Self::Cidr { .. } => false,
        }
    }

    fn holds_address(&self, address: Ipv4Addr) -> bool {
        match self {
            Self::Cidr { network, prefix } => in_network(address, *network, *prefix),
            _ => false,
        }
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn in_network(address: Ipv4Addr, network: Ipv4Addr, prefix: u8) -> bool {
    u32::from(address) & mask(prefix) == u32::from(network)
}

fn is_below(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1
        && name.ends_with(suffix)
        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

/// Letters, digits and hyphens in dot-separated labels of 1 to 63 characters, not starting
/// or ending with a hyphen, not all digits (that is an address).
fn is_host_name(name: &str) -> bool {
    name.len() <= MAX_NAME
        && !name
            .split('.')
            .all(|label| label.bytes().all(|b| b.is_ascii_digit()))
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// One pattern: hosts and the ports allowed on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    hosts: Hosts,
    /// One port, or `None` for the defaults (80 and 443).
    port: Option<u16>,
}

impl EgressRule {
    fn allows_port(&self, port: u16) -> bool {
        match self.port {
            Some(own) => own == port,
            None => DEFAULT_PORTS.contains(&port),
        }
    }

    fn ports(&self) -> Vec<u16> {
        self.port.map_or(DEFAULT_PORTS.to_vec(), |port| vec![port])
    }
}

impl FromStr for EgressRule {
    type Err = PatternError;

    fn from_str(pattern: &str) -> Result<Self, Self::Err> {
        let text = pattern.trim();
        if text.contains("://") {
            return Err(PatternError::Shape(pattern.to_string()));
        }
        let (hosts, port) = match text.rsplit_once(':') {
            Some((hosts, port)) if !hosts.contains(':') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| PatternError::Port(pattern.to_string()))?;
                (hosts, Some(port))
            }
            _ => (text, None),
        };
        Ok(Self {
            hosts: Hosts::parse(hosts, pattern)?,
            port,
        })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.hosts {
            Hosts::Name(name) => f.write_str(name)?,
            Hosts::Below(suffix) => write!(f, "*.{suffix}")?,
            Hosts::Cidr { network, prefix } => write!(f, "{network}/{prefix}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

impl Serialize for EgressRule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EgressRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for EgressRule {
    fn schema_name() -> Cow<'static, str> {
        "EgressRule".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": "string"})
    }
}

/// What a session asked for reaches beyond what it may have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "egress_allow pattern \"{pattern}\" is wider than what {by} allows ({allowed}); ask only for hosts and ports within it"
)]
pub struct Wider {
    pub pattern: String,
    pub by: &'static str,
    pub allowed: String,
}

/// A list of patterns. Empty means nothing is reachable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Allowlist(Vec<EgressRule>);

impl Allowlist {
    pub fn new(rules: Vec<EgressRule>) -> Self {
        Self(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn rules(&self) -> &[EgressRule] {
        &self.0
    }

    /// Parses a comma-separated list (the `--egress-allow` flag); blanks are skipped.
    pub fn parse_list(text: &str) -> Result<Self, PatternError> {
        text.split(',')
            .map(str::trim)
            .filter(|pattern| !pattern.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Every host and port `rule` names is allowed by one of these patterns.
    fn covers(&self, rule: &EgressRule) -> bool {
        rule.ports().into_iter().all(|port| {
            self.0
                .iter()
                .any(|own| own.allows_port(port) && own.hosts.holds(&rule.hosts))
        })
    }

    /// `requested` when this list covers each of its patterns; otherwise the first pattern
    /// that reaches beyond, with `by` naming who set this list.
    pub fn narrow(&self, requested: &Allowlist, by: &'static str) -> Result<(), Wider> {
        match requested.0.iter().find(|rule| !self.covers(rule)) {
            None => Ok(()),
            Some(rule) => Err(Wider {
                pattern: rule.to_string(),
                by,
                allowed: if self.0.is_empty() {
                    "nothing".to_string()
                } else {
                    self.to_string()
                },
            }),
        }
    }

    /// The patterns `widest` covers, and those it does not.
    pub fn within(&self, widest: &Allowlist) -> (Allowlist, Allowlist) {
        let (kept, dropped) = self.0.iter().cloned().partition(|rule| widest.covers(rule));
        (Self(kept), Self(dropped))
    }

    /// A name (lower case, no trailing dot) and port one of the host patterns allows.
    pub fn allows_name(&self, name: &str, port: u16) -> bool {
        self.0
            .iter()
            .any(|rule| rule.allows_port(port) && rule.hosts.names(name))
    }

    /// An address and port a CIDR pattern names.
    pub fn names_address(&self, address: Ipv4Addr, port: u16) -> bool {
        self.0
            .iter()
            .any(|rule| rule.allows_port(port) && rule.hosts.holds_address(address))
    }
}

impl FromStr for Allowlist {
    type Err = PatternError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse_list(text)
    }
}

impl fmt::Display for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, rule) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{rule}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> Allowlist {
        Allowlist::parse_list(text).expect("valid list")
    }

    #[test]
    fn patterns_parse_and_print_back() {
        for (given, shown) in [
            ("pypi.org", "pypi.org"),
            ("PyPI.org.", "pypi.org"),
            ("*.example.com:8443", "*.example.com:8443"),
            ("10.1.2.3/16", "10.1.0.0/16"),
            ("127.0.0.1:9000", "127.0.0.1/32:9000"),
            ("localhost", "localhost"),
        ] {
            let rule: EgressRule = given.parse().expect(given);
            assert_eq!(rule.to_string(), shown, "{given}");
        }
    }

    #[test]
    fn bad_patterns_name_what_is_wrong() {
        for (given, error) in [
            ("", PatternError::Shape(String::new())),
            ("*", PatternError::Everything("*".into())),
            ("*.com.:0", PatternError::Port("*.com.:0".into())),
            ("pypi.org:http", PatternError::Port("pypi.org:http".into())),
            ("::1", PatternError::Ipv6("::1".into())),
            ("[::1]:80", PatternError::Ipv6("[::1]:80".into())),
            ("10.0.0.0/33", PatternError::Prefix("10.0.0.0/33".into())),
            ("300.1.1.1", PatternError::Shape("300.1.1.1".into())),
            ("a..b", PatternError::Shape("a..b".into())),
            ("-a.com", PatternError::Shape("-a.com".into())),
            ("a_b.com", PatternError::Shape("a_b.com".into())),
            (
                "http://pypi.org",
                PatternError::Shape("http://pypi.org".into()),
            ),
            ("ex*.com", PatternError::Shape("ex*.com".into())),
        ] {
            assert_eq!(given.parse::<EgressRule>(), Err(error), "{given}");
        }
    }

    #[test]
    fn names_match_exactly_or_strictly_below_a_wildcard() {
        let allowed = list("pypi.org, *.example.com:8443");
        assert!(allowed.allows_name("pypi.org", 443));
        assert!(allowed.allows_name("pypi.org", 80));
        assert!(!allowed.allows_name("pypi.org", 22));
        assert!(!allowed.allows_name("evilpypi.org", 443));
        assert!(!allowed.allows_name("pypi.org.evil.com", 443));
        assert!(allowed.allows_name("a.example.com", 8443));
        assert!(allowed.allows_name("b.a.example.com", 8443));
        assert!(!allowed.allows_name("example.com", 8443));
        assert!(!allowed.allows_name("badexample.com", 8443));
        assert!(!allowed.allows_name("a.example.com", 443));
    }

    #[test]
    fn addresses_match_only_cidr_patterns() {
        let allowed = list("10.1.0.0/16:5432, pypi.org");
        assert!(allowed.names_address(Ipv4Addr::new(10, 1, 200, 3), 5432));
        assert!(!allowed.names_address(Ipv4Addr::new(10, 2, 0, 1), 5432));
        assert!(!allowed.names_address(Ipv4Addr::new(10, 1, 0, 1), 443));
        let everything = list("0.0.0.0/0");
        assert!(everything.names_address(Ipv4Addr::new(169, 254, 169, 254), 80));
    }

    #[test]
    fn narrowing_refuses_the_first_wider_pattern() {
        let server = list("pypi.org, files.pythonhosted.org:443, *.example.com, 10.0.0.0/8:5432");
        let fits = list(
            "pypi.org:443, files.pythonhosted.org:443, a.example.com, *.b.example.com:80, 10.9.0.0/16:5432",
        );
        assert_eq!(server.narrow(&fits, "the server"), Ok(()));
        for (asked, named) in [
            ("pypi.org:22", "pypi.org:22"),
            ("files.pythonhosted.org", "files.pythonhosted.org"),
            ("example.com", "example.com"),
            ("*.com", "*.com"),
            ("10.0.0.0/7:5432", "10.0.0.0/7:5432"),
            ("10.0.0.1", "10.0.0.1/32"),
        ] {
            let error = server.narrow(&list(asked), "the server").unwrap_err();
            assert_eq!(error.pattern, named, "{asked}");
        }
        let nothing = Allowlist::default();
        let error = nothing.narrow(&list("pypi.org"), "your token").unwrap_err();
        assert_eq!(
            error.to_string(),
            "egress_allow pattern \"pypi.org\" is wider than what your token allows (nothing); ask only for hosts and ports within it"
        );
    }

    #[test]
    fn a_list_splits_into_what_a_narrower_one_still_covers_and_the_rest() {
        let (kept, dropped) = list("pypi.org, 10.0.0.0/8:22").within(&list("pypi.org"));
        assert_eq!((kept, dropped), (list("pypi.org"), list("10.0.0.0/8:22")));
    }

    #[test]
    fn default_ports_are_covered_port_by_port() {
        let server = list("pypi.org:80, pypi.org:443");
        assert_eq!(server.narrow(&list("pypi.org"), "the server"), Ok(()));
    }

    #[test]
    fn lists_keep_their_patterns_through_serde() {
        let allowed = list("pypi.org, 10.0.0.0/8:5432");
        let json = serde_json::to_string(&allowed).expect("serializes");
        assert_eq!(json, r#"["pypi.org","10.0.0.0/8:5432"]"#);
        assert_eq!(
            serde_json::from_str::<Allowlist>(&json).expect("parses"),
            allowed
        );
    }
}
