//! Which targets the server may dial or send datagrams to.
//!
//! A tunnel server is an open door into the network it runs in: without a policy, any client
//! could reach the server's loopback services, its LAN, or cloud metadata endpoints
//! (169.254.169.254). So by default every address that is not globally routable is refused,
//! and the operator opens exceptions with allow rules (`--allow`) or turns the check off
//! (`allow_private`).
//!
//! The check runs on the address actually dialled, after name resolution, so a name that
//! resolves to a private address is refused as well (no DNS rebinding around the policy).
//! IPv4-mapped (`::ffff:a.b.c.d`) and NAT64 (`64:ff9b::a.b.c.d`) IPv6 addresses are judged as
//! the IPv4 address they carry.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// The server's rules for targets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Exceptions that may be dialled even though they are in a restricted range.
    pub allow: Vec<AllowRule>,
    /// Turn the restriction off entirely (every address may be dialled).
    pub allow_private: bool,
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{ip} is a {class} address and not on the allow list")]
pub struct Refused {
    /// The address that was refused (after mapping IPv4-in-IPv6 forms back to IPv4).
    pub ip: IpAddr,
    /// The restricted range it falls in.
    pub class: AddressClass,
}

/// The restricted ranges, named for error messages and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// `100.64.0.0/10` (carrier-grade NAT).
    SharedCgnat,
    /// `169.254/16`, `fe80::/10`.
    LinkLocal,
    /// `fc00::/7`.
    UniqueLocal,
    /// `fec0::/10` (deprecated site-local, still private in practice).
    SiteLocal,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `240.0.0.0/4` (reserved for future use; never routable).
    Reserved,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::SharedCgnat => "shared (CGNAT)",
            Self::LinkLocal => "link-local",
            Self::UniqueLocal => "unique-local",
            Self::SiteLocal => "site-local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Reserved => "reserved",
        })
    }
}

/// One exception to the restriction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowRule {
    /// Any port on one address (`127.0.0.1`, `::1`).
    Ip(IpAddr),
    /// Any port on a network (`10.0.0.0/8`, `fd00::/8`).
    Cidr(Cidr),
    /// One port on one address (`127.0.0.1:8080`, `[::1]:53`).
    IpPort(IpAddr, u16),
    /// One port on a name, as the client asked for it (`localhost:8080`, case-insensitive).
    HostPort(String, u16),
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why an allow rule did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid allow rule {0:?}: expected IP, CIDR, IP:PORT, [IPV6]:PORT or HOST:PORT")]
pub struct AllowRuleError(pub String);

impl TargetPolicy {
    /// The default policy: restricted ranges refused, no exceptions.
    pub fn new() -> Self {
        Self::default()
    }

    /// A policy that allows everything (for tests and trusted setups).
    pub fn allow_all() -> Self {
        Self {
            allow: Vec::new(),
            allow_private: true,
        }
    }

    /// Decides whether `resolved:port`, reached by asking for `host`, may be dialled.
    ///
    /// `host` is the target as the client named it (a domain name or an IP literal); it only
    /// matters for [`AllowRule::HostPort`] rules. The decision itself is made on `resolved`.
    pub fn check(&self, host: &str, port: u16, resolved: IpAddr) -> Result<(), Refused> {
        if self.allow_private {
            return Ok(());
        }
        let ip = canonical_ip(resolved);
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        if self.allow.iter().any(|rule| rule.matches(host, port, ip)) {
            return Ok(());
        }
        Err(Refused { ip, class })
    }
}

/// Maps IPv4-mapped and NAT64 IPv6 addresses to the IPv4 address they stand for.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let [s0, s1, s2, s3, s4, s5, ..] = v6.segments();
    if [s0, s1, s2, s3, s4, s5] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., w, x, y, z] = v6.octets();
        return IpAddr::V4(Ipv4Addr::new(w, x, y, z));
    }
    ip
}

/// The restricted range an address falls in, or `None` for a globally routable address.
///
/// Expects an address already passed through [`canonical_ip`].
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, ..] = ip.octets();
    let class = match (a, b) {
        (0, _) => AddressClass::Unspecified,
        (127, _) => AddressClass::Loopback,
        (10, _) | (192, 168) => AddressClass::Private,
        (172, 16..=31) => AddressClass::Private,
        (100, 64..=127) => AddressClass::SharedCgnat,
        (169, 254) => AddressClass::LinkLocal,
        (224..=239, _) => AddressClass::Multicast,
        _ if ip == Ipv4Addr::BROADCAST => AddressClass::Broadcast,
        (240..=255, _) => AddressClass::Reserved,
        _ => return None,
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    let first = ip.segments()[0];
    let class = if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if first & 0xfe00 == 0xfc00 {
        AddressClass::UniqueLocal
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xffc0 == 0xfec0 {
        AddressClass::SiteLocal
    } else if first & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else {
        return None;
    };
    Some(class)
}

impl AllowRule {
    /// Whether this rule lets `ip:port` (asked for as `host`) through.
    pub fn matches(&self, host: &str, port: u16, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match self {
            Self::Ip(rule_ip) => canonical_ip(*rule_ip) == ip,
            Self::Cidr(net) => net.contains(ip),
            Self::IpPort(rule_ip, rule_port) => canonical_ip(*rule_ip) == ip && *rule_port == port,
            Self::HostPort(name, rule_port) => *rule_port == port && same_host(name, host),
        }
    }
}

/// Host names compare case-insensitively and ignore one trailing dot (`Example.com.`).
fn same_host(a: &str, b: &str) -> bool {
    let trim = |s: &str| s.strip_suffix('.').unwrap_or(s).to_owned();
    trim(a).eq_ignore_ascii_case(&trim(b))
}

impl Cidr {
    /// A network; fails if the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Whether `ip` lies in the network; an IPv4 address and its IPv4-mapped IPv6 form are
    /// treated as the same address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let canonical = canonical_ip(ip);
        let mapped = match canonical {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        [ip, canonical, mapped]
            .into_iter()
            .any(|candidate| self.contains_exact(candidate))
    }

    fn contains_exact(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(net.to_bits()) << 96,
                u128::from(ip.to_bits()) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(net.to_bits(), ip.to_bits(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the top `prefix` bits of two left-aligned 128-bit values agree.
fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    (a ^ b) & mask == 0
}

impl FromStr for AllowRule {
    type Err = AllowRuleError;

    /// Parses `IP`, `CIDR`, `IP:PORT`, `[IPV6]:PORT` or `HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || AllowRuleError(s.to_owned());
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        if let Some((addr, prefix)) = s.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| err())?;
            let prefix: u8 = prefix.parse().map_err(|_| err())?;
            return Cidr::new(addr, prefix).map(Self::Cidr).ok_or_else(err);
        }
        if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
            return Ok(Self::IpPort(sa.ip(), sa.port()));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
        let port: u16 = port.parse().map_err(|_| err())?;
        let name = crate::addr::validate_domain(host.as_bytes()).map_err(|_| err())?;
        if name.contains([':', '[', ']', '/']) {
            return Err(err());
        }
        Ok(Self::HostPort(name, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn class_of(s: &str) -> Option<AddressClass> {
        classify(canonical_ip(ip(s)))
    }

    #[test]
    fn ipv4_ranges() {
        use AddressClass::*;
        let cases = [
            ("0.0.0.0", Some(Unspecified)),
            ("0.255.255.255", Some(Unspecified)),
            ("1.0.0.0", None),
            ("9.255.255.255", None),
            ("10.0.0.0", Some(Private)),
            ("10.255.255.255", Some(Private)),
            ("11.0.0.0", None),
            ("100.63.255.255", None),
            ("100.64.0.0", Some(SharedCgnat)),
            ("100.127.255.255", Some(SharedCgnat)),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("127.0.0.1", Some(Loopback)),
            ("127.255.255.254", Some(Loopback)),
            ("128.0.0.0", None),
            ("169.253.255.255", None),
            ("169.254.169.254", Some(LinkLocal)),
            ("169.255.0.0", None),
            ("172.15.255.255", None),
            ("172.16.0.0", Some(Private)),
            ("172.31.255.255", Some(Private)),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("192.168.0.1", Some(Private)),
            ("192.169.0.0", None),
            ("223.255.255.255", None),
            ("224.0.0.1", Some(Multicast)),
            ("239.255.255.255", Some(Multicast)),
            ("240.0.0.0", Some(Reserved)),
            ("255.255.255.254", Some(Reserved)),
            ("255.255.255.255", Some(Broadcast)),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
        ];
        for (addr, want) in cases {
            assert_eq!(class_of(addr), want, "{addr}");
        }
    }

    #[test]
    fn ipv6_ranges() {
        use AddressClass::*;
        let cases = [
            ("::", Some(Unspecified)),
            ("::1", Some(Loopback)),
            ("::2", None),
            ("fbff:ffff::", None),
            ("fc00::", Some(UniqueLocal)),
            ("fd12:3456::1", Some(UniqueLocal)),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(UniqueLocal)),
            ("fe00::", None),
            ("fe80::1", Some(LinkLocal)),
            ("febf:ffff::", Some(LinkLocal)),
            ("fec0::1", Some(SiteLocal)),
            ("feff::1", Some(SiteLocal)),
            ("ff02::1", Some(Multicast)),
            ("ff0e::1", Some(Multicast)),
            ("2001:4860:4860::8888", None),
            ("2606:4700::1111", None),
        ];
        for (addr, want) in cases {
            assert_eq!(class_of(addr), want, "{addr}");
        }
    }

    #[test]
    fn ipv4_in_ipv6_is_judged_as_ipv4() {
        assert_eq!(class_of("::ffff:127.0.0.1"), Some(AddressClass::Loopback));
        assert_eq!(class_of("::ffff:10.1.2.3"), Some(AddressClass::Private));
        assert_eq!(class_of("::ffff:0.0.0.0"), Some(AddressClass::Unspecified));
        assert_eq!(class_of("::ffff:8.8.8.8"), None);
        assert_eq!(
            class_of("64:ff9b::192.168.1.1"),
            Some(AddressClass::Private)
        );
        assert_eq!(class_of("64:ff9b::8.8.8.8"), None);
        assert_eq!(canonical_ip(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(canonical_ip(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    #[test]
    fn default_policy_refuses_restricted_and_allows_public() {
        let policy = TargetPolicy::new();
        let err = policy.check("127.0.0.1", 80, ip("127.0.0.1")).unwrap_err();
        assert_eq!(
            err,
            Refused {
                ip: ip("127.0.0.1"),
                class: AddressClass::Loopback
            }
        );
        assert!(err.to_string().contains("loopback"));
        let err = policy
            .check("::ffff:192.168.0.1", 80, ip("::ffff:192.168.0.1"))
            .unwrap_err();
        assert_eq!(err.ip, ip("192.168.0.1"));
        assert!(
            policy
                .check("example.com", 443, ip("93.184.216.34"))
                .is_ok()
        );
        assert!(policy.check("example.com", 443, ip("2606:2800::1")).is_ok());
        // A public name resolving to a private address is refused.
        assert!(policy.check("evil.example", 80, ip("10.0.0.1")).is_err());
    }

    #[test]
    fn allow_private_allows_everything() {
        let policy = TargetPolicy::allow_all();
        for addr in ["127.0.0.1", "10.0.0.1", "::1", "fe80::1", "255.255.255.255"] {
            assert!(policy.check(addr, 1, ip(addr)).is_ok(), "{addr}");
        }
    }

    #[test]
    fn allow_rules_parse() {
        let parse = |s: &str| s.parse::<AllowRule>();
        assert_eq!(parse("127.0.0.1"), Ok(AllowRule::Ip(ip("127.0.0.1"))));
        assert_eq!(parse("::1"), Ok(AllowRule::Ip(ip("::1"))));
        assert_eq!(
            parse("10.0.0.0/8"),
            Ok(AllowRule::Cidr(Cidr::new(ip("10.0.0.0"), 8).unwrap()))
        );
        assert_eq!(
            parse("fd00::/8"),
            Ok(AllowRule::Cidr(Cidr::new(ip("fd00::"), 8).unwrap()))
        );
        assert_eq!(
            parse("127.0.0.1:8080"),
            Ok(AllowRule::IpPort(ip("127.0.0.1"), 8080))
        );
        assert_eq!(parse("[::1]:53"), Ok(AllowRule::IpPort(ip("::1"), 53)));
        assert_eq!(
            parse("localhost:22"),
            Ok(AllowRule::HostPort("localhost".into(), 22))
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "host",
            "host:",
            "host:70000",
            "a b:1",
            "[::1]",
            "1.2.3.4:",
            "::1:53x",
            "x/8:1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn allow_rules_match() {
        let policy = TargetPolicy {
            allow: [
                "127.0.0.1",
                "10.1.0.0/16",
                "192.168.1.1:8080",
                "[::1]:53",
                "Intranet.lan:80",
            ]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
            allow_private: false,
        };
        let ok = |host: &str, port, addr: &str| policy.check(host, port, ip(addr)).is_ok();
        assert!(ok("127.0.0.1", 1, "127.0.0.1"));
        assert!(ok("localhost", 65535, "127.0.0.1"));
        assert!(ok("x", 1, "::ffff:127.0.0.1"));
        assert!(!ok("127.0.0.2", 1, "127.0.0.2"));
        assert!(ok("10.1.255.255", 5, "10.1.255.255"));
        assert!(!ok("10.2.0.0", 5, "10.2.0.0"));
        assert!(ok("192.168.1.1", 8080, "192.168.1.1"));
        assert!(!ok("192.168.1.1", 8081, "192.168.1.1"));
        assert!(ok("::1", 53, "::1"));
        assert!(!ok("::1", 54, "::1"));
        assert!(ok("intranet.lan.", 80, "10.9.9.9"));
        assert!(!ok("intranet.lan", 81, "10.9.9.9"));
        assert!(!ok("other.lan", 80, "10.9.9.9"));
    }

    #[test]
    fn cidr_edges() {
        let all4 = Cidr::new(ip("0.0.0.0"), 0).unwrap();
        assert!(all4.contains(ip("255.1.2.3")));
        assert!(!all4.contains(ip("::1")));
        assert!(all4.contains(ip("::ffff:1.2.3.4")));
        let host = Cidr::new(ip("1.2.3.4"), 32).unwrap();
        assert!(host.contains(ip("1.2.3.4")));
        assert!(!host.contains(ip("1.2.3.5")));
        let v6 = Cidr::new(ip("2001:db8::"), 32).unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::")));
        let mapped_net = Cidr::new(ip("::ffff:10.0.0.0"), 104).unwrap();
        assert!(mapped_net.contains(ip("10.20.30.40")));
        assert!(!mapped_net.contains(ip("11.0.0.0")));
        let exact = Cidr::new(ip("::1"), 128).unwrap();
        assert!(exact.contains(ip("::1")));
        assert!(Cidr::new(ip("::"), 129).is_none());
        assert!(Cidr::new(ip("0.0.0.0"), 33).is_none());
    }
}
