//! This host as kernels might try to reach it: its addresses.

/// Every address of this host but loopback and link-local ones (`ip -o addr`), in interface
/// order: its own interfaces, Docker's bridge `docker0` and the gateway of every Docker
/// network here.
pub fn host_addresses() -> Vec<String> {
    let output = std::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let interface = fields.nth(1)?;
            let address = fields.nth(1)?.split('/').next()?.to_string();
            (interface != "lo" && !address.starts_with("fe80:")).then_some(address)
        })
        .collect()
}

/// The host's first IPv4 address that is not loopback.
pub fn host_address() -> String {
    host_addresses()
        .into_iter()
        .find(|address| address.parse::<std::net::Ipv4Addr>().is_ok())
        .expect("a non-loopback IPv4 address")
}
