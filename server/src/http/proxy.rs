//! Behind a reverse proxy: the client's address comes from `X-Forwarded-For` only when the
//! connection itself comes from a trusted proxy (`--trusted-proxies`), and then it is the
//! nearest address in that header that is not a trusted proxy — the one the last trusted hop
//! saw — so a client cannot pick its own address (rate limits and feedback caps key on it).

use std::net::IpAddr;

use axum::http::HeaderMap;

/// The client's address as resolved through trusted proxies (`access::client_address`);
/// `access::client_ip` prefers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// Addresses and networks (`10.0.0.0/8`, `::1`) whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<(IpAddr, u8)>,
}

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and networks; an empty list trusts nobody.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut networks = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (address, bits) = match item.split_once('/') {
                Some((address, bits)) => (address, Some(bits)),
                None => (item, None),
            };
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("`{item}` is not an IP address or network"))?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("`{item}`: the prefix length must be 0 to {max}"))?,
                None => max,
            };
            networks.push((address, bits));
        }
        Ok(Self { networks })
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks
            .iter()
            .any(|&(network, bits)| match (canonical(network), ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
                    u32::from(n) & mask == u32::from(a) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
                    u128::from(n) & mask == u128::from(a) & mask
                }
                _ => false,
            })
    }

    /// The client behind `peer`: `peer` itself unless it is trusted; then, reading
    /// `X-Forwarded-For` from the right, the first address that is not a trusted proxy (an
    /// unreadable entry stops the walk at the hop before it).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.contains(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(address) = hop.parse::<IpAddr>() else {
                return client;
            };
            client = address;
            if !self.contains(address) {
                return address;
            }
        }
        client
    }
}

/// An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) compares as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The connection's own address (0.0.0.0 where the server was built without connection info).
pub fn peer_ip(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let trusted = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8,fd00::/8").unwrap();
        assert!(trusted.contains(ip("127.0.0.1")));
        assert!(trusted.contains(ip("::ffff:127.0.0.1")));
        assert!(trusted.contains(ip("10.200.3.4")));
        assert!(trusted.contains(ip("fd12::1")));
        assert!(!trusted.contains(ip("127.0.0.2")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(!trusted.contains(ip("fe80::1")));
        assert!(
            TrustedProxies::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        for bad in ["localhost", "10.0.0.0/33", "::1/129", "10.0.0.0/x", "1.2.3"] {
            let err = TrustedProxies::parse(bad).unwrap_err();
            assert!(err.contains(bad.split('/').next().unwrap()), "{bad}: {err}");
        }
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop() {
        let trusted = TrustedProxies::parse("127.0.0.1,10.0.0.0/8").unwrap();
        // Not from a proxy: the header is the client's own claim and is ignored.
        assert_eq!(
            trusted.client(ip("203.0.113.9"), &forwarded("1.1.1.1")),
            ip("203.0.113.9")
        );
        // From the proxy: the address it saw, even if the client sent one of its own first.
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &forwarded("6.6.6.6, 203.0.113.9")),
            ip("203.0.113.9")
        );
        // Through two trusted proxies.
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &forwarded("203.0.113.9, 10.1.1.1")),
            ip("203.0.113.9")
        );
        // No header, or nothing readable: the proxy's own address.
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &forwarded("nonsense")),
            ip("127.0.0.1")
        );
        // Only trusted hops: the farthest of them.
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &forwarded("10.0.0.5")),
            ip("10.0.0.5")
        );
    }
}
