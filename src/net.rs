//! Addresses and networks as stickwarden keys them: an address is its own full-length network
//! (`/32`, `/128`), IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is folded to IPv4 first, and a CIDR must
//! have its host bits cleared. One canonical form means one store key per client, whatever table
//! type or text it came from.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses `a.b.c.d`, an IPv6 address, or a CIDR with zero host bits, into its canonical network.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    match s.split_once('/') {
        None => s.parse::<IpAddr>().map(host_net).map_err(|_| format!("'{s}' is not an IPv4 or IPv6 address")),
        Some((addr, len)) => {
            let addr: IpAddr = addr.parse().map_err(|_| format!("'{s}': '{addr}' is not an IPv4 or IPv6 address"))?;
            let len: u8 = len.parse().map_err(|_| format!("'{s}': '{len}' is not a prefix length"))?;
            let folded = addr.to_canonical();
            // A mapped address with a /96+ prefix folds to the IPv4 prefix it really names.
            let len = if folded != addr { len.checked_sub(96).ok_or(format!("'{s}': prefix too short"))? } else { len };
            let net = IpNet::new(folded, len).map_err(|_| format!("'{s}': prefix length {len} is too long"))?;
            if net.trunc() != net {
                return Err(format!("'{s}' has host bits set (did you mean {}?)", net.trunc()));
            }
            Ok(net)
        }
    }
}

/// An address as the full-length network stickwarden keys it by.
pub fn host_net(addr: IpAddr) -> IpNet {
    IpNet::from(addr.to_canonical())
}

/// Whether the network is a single address.
pub fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

/// The address or CIDR as people write it: `10.0.0.1` for a host, `10.0.0.0/24` for a network.
pub fn display(net: &IpNet) -> String {
    if is_host(net) {
        net.addr().to_string()
    } else {
        net.to_string()
    }
}

/// The enclosing prefix of `addr` used for subnet aggregation.
pub fn prefix_of(addr: IpAddr, v4_len: u8, v6_len: u8) -> IpNet {
    let addr = addr.to_canonical();
    let len = if addr.is_ipv4() { v4_len } else { v6_len };
    IpNet::new(addr, len).map(|n| n.trunc()).unwrap_or_else(|_| host_net(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms() {
        assert_eq!(display(&parse_net("10.0.0.1").unwrap()), "10.0.0.1");
        assert_eq!(display(&parse_net("::ffff:10.0.0.1").unwrap()), "10.0.0.1");
        assert_eq!(display(&parse_net("10.0.0.0/24").unwrap()), "10.0.0.0/24");
        assert_eq!(display(&parse_net("10.0.0.1/32").unwrap()), "10.0.0.1");
        assert_eq!(display(&parse_net("::ffff:10.0.0.0/120").unwrap()), "10.0.0.0/24");
        assert_eq!(display(&parse_net("2001:db8::/64").unwrap()), "2001:db8::/64");
        assert!(parse_net("10.0.0.1/24").unwrap_err().contains("did you mean 10.0.0.0/24"));
        assert!(parse_net("999.1.1.1").is_err());
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("").is_err());
        assert_eq!(prefix_of("10.1.2.3".parse().unwrap(), 24, 64).to_string(), "10.1.2.0/24");
        assert_eq!(prefix_of("2001:db8::1".parse().unwrap(), 24, 64).to_string(), "2001:db8::/64");
    }
}
