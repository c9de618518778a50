//! The outbound guard: deliveries go to public addresses only, unless allowed.
//!
//! Judged on the addresses actually connected to: the delivery client
//! ([`super::client`]) resolves a hostname itself and drops every refused address before
//! connecting (so DNS rebinding gains nothing), and checks IP literals as they are.
//! Redirects are never followed and no proxy is used, so neither can route around it.

use std::net::IpAddr;

use ipnet::IpNet;

/// Ranges no delivery goes to by default: this network, loopback, RFC 1918, CGNAT,
/// link-local, documentation, benchmarking, multicast and reserved ranges; for IPv6 the
/// same kinds, plus unique-local, IPv4-mapped, IPv4-compatible and NAT64 (which can reach
/// any IPv4 address).
const BLOCKED: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/96",
    "::1/128",
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001::/23",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "fec0::/10",
    "ff00::/8",
];

/// Which addresses deliveries may go to.
#[derive(Debug, Clone)]
pub struct Guard {
    blocked: Vec<IpNet>,
    allowed: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0} is not a public address (add it to the allow-list to deliver there)")]
pub struct Blocked(pub IpAddr);

impl Guard {
    /// The default ranges refused, with `allowed` ranges opened (tests and local
    /// development allow 127.0.0.0/8).
    pub fn new(allowed: Vec<IpNet>) -> Self {
        let blocked = BLOCKED
            .iter()
            .map(|n| n.parse().expect("a valid built-in range"))
            .collect();
        Self { blocked, allowed }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|n| n.contains(&ip))
            || !self.blocked.iter().any(|n| n.contains(&ip))
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), Blocked> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(Blocked(ip))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(vec![])
    }

    #[test]
    fn private_and_special_addresses_are_refused_by_default() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "224.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("an ip");
            assert!(!guard().permits(ip), "{ip} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_permitted() {
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:2800:220:1:248:1893:25c8:1946",
            "172.32.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("an ip");
            assert!(guard().permits(ip), "{ip} should be permitted");
        }
    }

    #[test]
    fn the_allow_list_opens_chosen_ranges_only() {
        let g = Guard::new(vec!["127.0.0.0/8".parse().expect("net")]);
        assert!(g.permits("127.0.0.1".parse().expect("ip")));
        assert!(!g.permits("10.0.0.1".parse().expect("ip")));
        assert!(!g.permits("::1".parse().expect("ip")));
    }
}
