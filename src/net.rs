//! Addresses and networks as stickwarden keys them, and the one containment rule. An address is
//! its own full-length network (`/32`, `/128`), IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is folded to
//! IPv4 first, and a CIDR must have its host bits cleared: one canonical form means one store key
//! per client, whatever table type or text it came from. [`covers`] and [`overlaps`] decide
//! whether one network reaches an address or another network the way HAProxy matches clients:
//! an IPv4 client is matched against IPv6 patterns as `::ffff:a.b.c.d`, so `::/0` (or `::/64`,
//! which holds `::ffff:0:0/96`) denies every IPv4 client too. The allowlist, `never_block`, the
//! HAProxy hosts, aggregation, manual blocks, imports and the reconciler all go through them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

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

/// `::ffff:0:0/96`, where HAProxy finds IPv4 clients in an IPv6 match.
const MAPPED: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);

/// The clients a network reaches, by family: the IPv4 range (its own, or the part of
/// `::ffff:0:0/96` an IPv6 network holds) and the IPv6 range outside the mapped block.
struct Reach {
    v4: Option<Ipv4Net>,
    v6: Option<Ipv6Net>,
}

fn reach(net: &IpNet) -> Reach {
    match net {
        IpNet::V4(n) => Reach { v4: Some(*n), v6: None },
        IpNet::V6(n) if n.contains(&MAPPED) => Reach { v4: Some(Ipv4Net::default()), v6: Some(*n) },
        IpNet::V6(n) if MAPPED.contains(n) => {
            let low = u128::from(n.network()) as u32;
            let v4 = Ipv4Net::new(Ipv4Addr::from(low), n.prefix_len() - 96).expect("96 <= len <= 128");
            Reach { v4: Some(v4), v6: None }
        }
        IpNet::V6(n) => Reach { v4: None, v6: Some(*n) },
    }
}

/// Whether every client `inner` reaches is also reached by `outer`: the one containment rule.
pub fn covers(outer: &IpNet, inner: &IpNet) -> bool {
    let (o, i) = (reach(outer), reach(inner));
    let v4 = i.v4.is_none_or(|i| o.v4.is_some_and(|o| o.contains(&i)));
    let v6 = i.v6.is_none_or(|i| o.v6.is_some_and(|o| o.contains(&i)));
    v4 && v6
}

/// Whether `net` reaches the client `addr` (IPv4-mapped or not).
pub fn covers_addr(net: &IpNet, addr: IpAddr) -> bool {
    covers(net, &host_net(addr))
}

/// Every network holding `addr`, narrowest first: the address itself, then each shorter prefix
/// down to `/0` (33 for IPv4, 129 for IPv6), as blocks are keyed.
pub fn prefixes(addr: IpAddr) -> Vec<IpNet> {
    let host = host_net(addr);
    (0..=host.max_prefix_len()).rev().map(|p| IpNet::new_assert(host.addr(), p).trunc()).collect()
}

/// Whether some client is reached by both networks.
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    // Two CIDR ranges of one family meet exactly when one holds the other.
    let (a, b) = (reach(a), reach(b));
    let v4 = matches!((a.v4, b.v4), (Some(x), Some(y)) if x.contains(&y) || y.contains(&x));
    let v6 = matches!((a.v6, b.v6), (Some(x), Some(y)) if x.contains(&y) || y.contains(&x));
    v4 || v6
}

/// Whether `net` reaches every IPv4 client (`0.0.0.0/0`, `::/0`, `::/64`, `::ffff:0:0/96`...).
pub fn reaches_all_ipv4(net: &IpNet) -> bool {
    reach(net).v4.is_some_and(|n| n.prefix_len() == 0)
}

/// The prefix length that matters for how broad `net` is: its IPv4 reach for a network that holds
/// IPv4 clients, else its own length (`None` for IPv6 networks).
pub fn breadth(net: &IpNet) -> (Option<u8>, Option<u8>) {
    let r = reach(net);
    (r.v4.map(|n| n.prefix_len()), r.v6.map(|n| n.prefix_len()))
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

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_networks_holding_the_mapped_block_reach_every_ipv4_client() {
        for wide in ["::/0", "::/1", "::/64", "::/80", "::ffff:0:0/96"] {
            assert!(covers(&n(wide), &n("127.0.0.1/32")), "{wide}");
            assert!(covers(&n(wide), &n("10.0.0.0/8")), "{wide}");
            assert!(overlaps(&n(wide), &n("192.0.2.7/32")), "{wide}");
            assert!(overlaps(&n("192.0.2.7/32"), &n(wide)), "{wide}");
            assert!(reaches_all_ipv4(&n(wide)), "{wide}");
            assert!(covers_addr(&n(wide), "127.0.0.1".parse().unwrap()), "{wide}");
            assert!(covers_addr(&n(wide), "::ffff:127.0.0.1".parse().unwrap()), "{wide}");
        }
        // A part of the mapped block reaches that part of IPv4 only.
        assert!(covers(&n("::ffff:10.0.0.0/104"), &n("10.1.2.3/32")));
        assert!(!covers(&n("::ffff:10.0.0.0/104"), &n("11.0.0.1/32")));
        assert!(covers(&n("10.0.0.0/8"), &n("::ffff:10.1.0.0/112")));
        assert!(!reaches_all_ipv4(&n("::ffff:0:0/97")));
        assert_eq!(breadth(&n("::ffff:0:0/97")), (Some(1), None));
        assert_eq!(breadth(&n("::/64")), (Some(0), Some(64)));
        // IPv6 networks away from the mapped block reach no IPv4 client.
        for other in ["2001:db8::/32", "::1/128", "fe80::/10", "::/97"] {
            assert!(!overlaps(&n(other), &n("0.0.0.0/0")), "{other}");
            assert!(!reaches_all_ipv4(&n(other)), "{other}");
        }
        // IPv4 never reaches IPv6 space outside the mapped block.
        assert!(!covers(&n("0.0.0.0/0"), &n("::/0")));
        assert!(!covers(&n("0.0.0.0/0"), &n("::1/128")));
        assert!(covers(&n("::/0"), &n("::1/128")));
        assert!(!covers(&n("::/64"), &n("2001:db8::/64")));
    }

    proptest::proptest! {
        /// covers and overlaps agree with matching every address HAProxy could see: a client is
        /// reached by a network when it is inside it, or when its mapped form is.
        #[test]
        fn containment_agrees_with_matching_clients(
            a in 0u32..=u32::MAX, alen in 0u8..=32, b in 0u32..=u32::MAX, blen in 0u8..=32,
            wide6 in 0u8..=128, probe in 0u32..=u32::MAX,
        ) {
            let v4 = |x: u32, l: u8| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(x), l).unwrap().trunc());
            let mapped = |x: u32, l: u8| {
                let addr = Ipv6Addr::from(0xffff_0000_0000u128 | u128::from(x));
                IpNet::V6(Ipv6Net::new(addr, l).unwrap().trunc())
            };
            let (na, nb) = (v4(a, alen), mapped(b, 96 + blen));
            let client: IpAddr = Ipv4Addr::from(probe).into();
            let in_b = nb.contains(&IpAddr::V6(Ipv4Addr::from(probe).to_ipv6_mapped()));
            proptest::prop_assert_eq!(covers_addr(&nb, client), in_b);
            proptest::prop_assert_eq!(covers_addr(&na, client), na.contains(&client));
            if covers(&na, &nb) && in_b {
                proptest::prop_assert!(na.contains(&client));
            }
            if na.contains(&client) && in_b {
                proptest::prop_assert!(overlaps(&na, &nb));
            }
            // Every IPv6 network holding the mapped block reaches every IPv4 client.
            let wide = IpNet::V6(Ipv6Net::new(Ipv6Addr::UNSPECIFIED, wide6.min(80)).unwrap());
            proptest::prop_assert!(covers_addr(&wide, client));
        }
    }
}
