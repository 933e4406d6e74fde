//! Egress by allowlist: the patterns a session may reach (`allowlist`), the check of one
//! target against them (`guard`: resolve here, refuse addresses that are not public unless a
//! CIDR names them, pin the connection to the checked address) and the HTTP/CONNECT proxy a
//! kernel's only route out goes through (`proxy`), on a Unix socket or a TCP address. It knows nothing of containers or
//! sessions beyond the names it logs; it never interprets what flows through a tunnel.

mod allowlist;
mod guard;
mod proxy;

pub use allowlist::{Allowlist, EgressRule, Wider};
pub use proxy::{ListenAt, ProxyScope, serve};
