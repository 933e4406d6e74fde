//! The check of one target a kernel asked the egress proxy for, and the connection to it. A
//! name must match a host pattern and is resolved here, by the server; an address literal
//! must match a CIDR pattern. Every address is checked, and one that is loopback, private,
//! link-local (the cloud metadata services), otherwise not public, or one of this server's
//! own, is reached only when a CIDR pattern names it. The connection goes to the address
//! that was checked, so a second lookup cannot steer it elsewhere (no DNS rebinding).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use super::allowlist::Allowlist;

/// How long resolving a name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to one address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses tried per target, in the resolver's order.
const MAX_ATTEMPTS: usize = 3;

/// Why a target was not reached. The first two are the policy's refusals.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{target} is not on this session's egress allowlist ({allowed})")]
    NotListed { target: String, allowed: String },
    #[error(
        "{target} resolves only to addresses kernels may not reach ({addresses}): loopback, private, link-local, metadata and the server's own addresses need a CIDR pattern"
    )]
    NotPublic { target: String, addresses: String },
    #[error("{target} could not be resolved: {detail}")]
    Unresolved { target: String, detail: String },
    #[error("{target} could not be reached ({detail})")]
    Unreachable { target: String, detail: String },
}

impl Refusal {
    /// Refused by the allowlist (rather than failed on the way).
    pub fn is_policy(&self) -> bool {
        matches!(self, Self::NotListed { .. } | Self::NotPublic { .. })
    }
}

/// Which addresses a listed name may resolve to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addresses {
    /// Public ones, and others only when a CIDR pattern names them: for kernels.
    PublicOrNamed,
    /// Any: for names the operator gave (the package index).
    Any,
}

/// A connection the guard allowed, to the address it checked.
pub struct Reached {
    pub stream: TcpStream,
    pub address: SocketAddr,
}

/// Checks and connects `host:port` (a name, or an address literal, IPv6 in brackets) for a
/// kernel allowed `allowlist`.
pub async fn connect(
    allowlist: &Allowlist,
    addresses: Addresses,
    host: &str,
    port: u16,
) -> Result<Reached, Refusal> {
    let target = format!("{host}:{port}");
    let unbracketed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let candidates: Vec<IpAddr> = match unbracketed.parse::<IpAddr>() {
        Ok(address) => {
            let named = match address {
                IpAddr::V4(v4) => allowlist.names_address(v4, port),
                IpAddr::V6(_) => false,
            };
            if !named {
                return Err(not_listed(target, allowlist));
            }
            vec![address]
        }
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            if !allowlist.allows_name(&name, port) {
                return Err(not_listed(target, allowlist));
            }
            let resolved = resolve(&name, port)
                .await
                .map_err(|detail| Refusal::Unresolved {
                    target: target.clone(),
                    detail,
                })?;
            let own = own_addresses();
            let (allowed, refused): (Vec<IpAddr>, Vec<IpAddr>) =
                resolved.into_iter().partition(|address| {
                    addresses == Addresses::Any || may_reach(allowlist, *address, port, &own)
                });
            if allowed.is_empty() {
                return Err(Refusal::NotPublic {
                    target,
                    addresses: shown(&refused),
                });
            }
            allowed
        }
    };
    let mut failures = Vec::new();
    for address in candidates.into_iter().take(MAX_ATTEMPTS) {
        let address = SocketAddr::new(address, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(Reached { stream, address }),
            Ok(Err(error)) => failures.push(format!("{address}: {error}")),
            Err(_) => failures.push(format!("{address}: timed out")),
        }
    }
    Err(Refusal::Unreachable {
        target,
        detail: failures.join("; "),
    })
}

fn not_listed(target: String, allowlist: &Allowlist) -> Refusal {
    Refusal::NotListed {
        target,
        allowed: allowlist.to_string(),
    }
}

/// Whether a name's resolved `address` may be reached: public and not one of the server's
/// `own`, or named by a CIDR pattern.
fn may_reach(allowlist: &Allowlist, address: IpAddr, port: u16, own: &[IpAddr]) -> bool {
    let named = match canonical(address) {
        IpAddr::V4(v4) => allowlist.names_address(v4, port),
        IpAddr::V6(_) => false,
    };
    named || (is_public(address) && !own.contains(&address))
}

fn shown(addresses: &[IpAddr]) -> String {
    addresses
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn resolve(name: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let lookup = tokio::net::lookup_host((name, port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(found)) => {
            let mut addresses: Vec<IpAddr> = Vec::new();
            for address in found.map(|socket| socket.ip()) {
                if !addresses.contains(&address) {
                    addresses.push(address);
                }
            }
            if addresses.is_empty() {
                Err("no addresses".to_string())
            } else {
                Ok(addresses)
            }
        }
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}

/// The addresses of this server's own interfaces (a proxy on the host would otherwise
/// reach the host's services through its public address). Empty when they cannot be read.
fn own_addresses() -> Vec<IpAddr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .into_iter()
            .map(|interface| interface.ip())
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "could not list this host's addresses");
            Vec::new()
        }
    }
}

/// An IPv4 address carried in IPv6 (mapped, or NAT64's well-known prefix) as itself.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let segments = v6.segments();
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b, c, d] = [segments[6] >> 8, segments[6], segments[7] >> 8, segments[7]];
                return IpAddr::V4(Ipv4Addr::new(a as u8, b as u8, c as u8, d as u8));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// Whether an address is on the public internet: not loopback, private, link-local (which
/// holds 169.254.169.254), shared (100.64.0.0/10, where some clouds keep their metadata
/// service), unspecified, broadcast, multicast or reserved.
pub fn is_public(address: IpAddr) -> bool {
    match canonical(address) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(address: Ipv4Addr) -> bool {
    let [a, b, ..] = address.octets();
    !(address.is_unspecified()
        || address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_broadcast()
        || address.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && address.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b))
        || a >= 240)
}

fn is_public_v6(address: Ipv6Addr) -> bool {
    let first = address.segments()[0];
    !(address.is_unspecified()
        || address.is_loopback()
        || address.is_multicast()
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80
        || (first & 0xffc0) == 0xfec0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.17.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.0.192",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "151.101.0.223", "203.0.113.80", "2a04:4e42::223"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn the_servers_own_addresses_pass_only_by_a_cidr() {
        let own: Vec<IpAddr> = vec!["198.51.100.7".parse().unwrap()];
        let by_name = Allowlist::parse_list("example.com").unwrap();
        assert!(!may_reach(&by_name, own[0], 443, &own));
        assert!(may_reach(
            &by_name,
            "198.51.100.8".parse().unwrap(),
            443,
            &own
        ));
        assert!(!may_reach(&by_name, "10.0.0.1".parse().unwrap(), 443, &own));
        let with_cidr = Allowlist::parse_list("example.com, 198.51.100.0/24:443").unwrap();
        assert!(may_reach(&with_cidr, own[0], 443, &own));
        assert!(!may_reach(&with_cidr, own[0], 80, &own));
    }

    #[tokio::test]
    async fn literals_and_names_off_the_list_are_refused_before_any_connection() {
        let allowed = Allowlist::parse_list("10.1.0.0/16:8080, pypi.org").unwrap();
        for (host, port) in [
            ("10.2.0.1", 8080),
            ("10.1.0.1", 8081),
            ("[::1]", 80),
            ("example.com", 443),
            ("pypi.org", 22),
        ] {
            let refusal = connect(&allowed, Addresses::PublicOrNamed, host, port)
                .await
                .err()
                .expect(host);
            assert!(
                matches!(refusal, Refusal::NotListed { .. }),
                "{host}: {refusal}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_unless_a_cidr_names_it() {
        let by_name = Allowlist::parse_list("localhost:9").unwrap();
        let refusal = connect(&by_name, Addresses::PublicOrNamed, "localhost", 9)
            .await
            .err()
            .expect("refused");
        assert!(matches!(refusal, Refusal::NotPublic { .. }), "{refusal}");
        let with_cidr = Allowlist::parse_list("localhost:9, 127.0.0.0/8:9").unwrap();
        let outcome = connect(&with_cidr, Addresses::PublicOrNamed, "localhost", 9).await;
        assert!(
            !matches!(
                outcome,
                Err(Refusal::NotListed { .. } | Refusal::NotPublic { .. })
            ),
            "a CIDR pattern lets the name through"
        );
    }
}
