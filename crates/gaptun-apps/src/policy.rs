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
//! An IPv6 address that carries an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4,
//! Teredo, ISATAP) is judged by that IPv4 address as well: a host that speaks one of these
//! transition mechanisms delivers the packet to the embedded IPv4 address, so
//! `2002:7f00:1::` would otherwise be a way to reach `127.0.0.1`. See [`judged_addresses`].

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
#[error("{ip}{} is a {class} address and not on the allow list", via_suffix(.embedded_in))]
pub struct Refused {
    /// The address that was refused (after mapping IPv4-in-IPv6 forms back to IPv4).
    pub ip: IpAddr,
    /// The restricted range it falls in.
    pub class: AddressClass,
    /// The IPv6 address asked for, when `ip` is an IPv4 address embedded in it (6to4,
    /// Teredo, NAT64, ...): the operator should see both.
    pub embedded_in: Option<Ipv6Addr>,
}

fn via_suffix(embedded_in: &Option<Ipv6Addr>) -> String {
    embedded_in.map_or_else(String::new, |v6| format!(" (embedded in {v6})"))
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
        let allowed = |addr: IpAddr| self.allow.iter().any(|rule| rule.matches(host, port, addr));
        // An allow rule naming the address itself (not an embedded one) lets it through.
        if allowed(ip) {
            return Ok(());
        }
        let embedded_in = match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        };
        for judged in judged_addresses(ip) {
            if let Some(class) = classify(judged)
                && !allowed(judged)
            {
                let embedded_in = embedded_in.filter(|_| judged != ip);
                return Err(Refused {
                    ip: judged,
                    class,
                    embedded_in,
                });
            }
        }
        Ok(())
    }
}

/// The addresses the policy judges for `ip`: `ip` itself first, then, for an IPv6 address,
/// every IPv4 address it embeds. The target is refused if any of them is restricted.
///
/// Forms recognised (all fixed, well-known prefixes; an operator-specific NAT64 or 6rd prefix
/// cannot be recognised from the address alone):
/// - IPv4-compatible `::a.b.c.d` (`::/96`, deprecated; `::` and `::1` stay themselves);
/// - IPv4-translated `::ffff:0:a.b.c.d` (`::ffff:0:0:0/96`, SIIT);
/// - NAT64 local-use `64:ff9b:1::/48` (RFC 8215): the prefix length a network uses inside it
///   is not visible in the address, so every RFC 6052 layout the address is consistent with
///   (/48, /56, /64 with the reserved octet and the suffix zero; /96 always) is judged;
/// - 6to4 `2002:AABB:CCDD::/48` (RFC 3056): the IPv4 address is bits 16..48;
/// - Teredo `2001:0::/32` (RFC 4380): the server's IPv4 address (bits 32..64) and the client's
///   (the last 32 bits, inverted);
/// - ISATAP interface identifiers `::0:5efe:a.b.c.d` and `::200:5efe:a.b.c.d` (RFC 5214).
///
/// IPv4-mapped `::ffff:a.b.c.d` and well-known NAT64 `64:ff9b::a.b.c.d` are already replaced
/// by [`canonical_ip`], which this expects to have been applied.
pub fn judged_addresses(ip: IpAddr) -> Vec<IpAddr> {
    let mut out = vec![ip];
    if let IpAddr::V6(v6) = ip {
        out.extend(embedded_ipv4(v6).into_iter().map(IpAddr::V4));
    }
    out
}

/// The IPv4 addresses embedded in `v6` by the transition forms listed at [`judged_addresses`].
fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let o = v6.octets();
    let s = v6.segments();
    let v4 = |a: u8, b: u8, c: u8, d: u8| Ipv4Addr::new(a, b, c, d);
    let last32 = v4(o[12], o[13], o[14], o[15]);
    let mut found = Vec::new();
    match s {
        // IPv4-compatible; `::` and `::1` are the unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, ..] if !v6.is_unspecified() && !v6.is_loopback() => found.push(last32),
        // IPv4-translated (SIIT).
        [0, 0, 0, 0, 0xffff, 0, ..] => found.push(last32),
        // NAT64 local-use prefix: try each RFC 6052 layout of a prefix of /48 or longer.
        [0x64, 0xff9b, 1, ..] => {
            let zero = |range: std::ops::Range<usize>| o[range].iter().all(|b| *b == 0);
            if o[8] == 0 && zero(11..16) {
                found.push(v4(o[6], o[7], o[9], o[10])); // /48
            }
            if o[8] == 0 && zero(12..16) {
                found.push(v4(o[7], o[9], o[10], o[11])); // /56
            }
            if o[8] == 0 && zero(13..16) {
                found.push(v4(o[9], o[10], o[11], o[12])); // /64
            }
            found.push(last32); // /96
        }
        // 6to4.
        [0x2002, ..] => found.push(v4(o[2], o[3], o[4], o[5])),
        // Teredo: server address in clear, client address inverted.
        [0x2001, 0, ..] => {
            found.push(v4(o[4], o[5], o[6], o[7]));
            found.push(v4(!o[12], !o[13], !o[14], !o[15]));
        }
        _ => {}
    }
    // ISATAP interface identifier (any prefix), with the universal/local bit clear or set.
    if matches!(s[4], 0 | 0x0200) && s[5] == 0x5efe {
        found.push(last32);
    }
    found
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

    /// What the default policy says about `addr`: `None` if allowed, else the judged address
    /// and its class.
    fn verdict(addr: &str) -> Option<(IpAddr, AddressClass)> {
        TargetPolicy::new()
            .check(addr, 80, ip(addr))
            .err()
            .map(|r| (r.ip, r.class))
    }

    #[test]
    fn every_ipv6_form_embedding_ipv4_is_judged_by_the_ipv4_address() {
        use AddressClass::*;
        // (address, refused as (judged address, class), or None if allowed)
        let cases: &[(&str, Option<(&str, AddressClass)>)] = &[
            // IPv4-mapped.
            ("::ffff:127.0.0.1", Some(("127.0.0.1", Loopback))),
            (
                "::ffff:169.254.169.254",
                Some(("169.254.169.254", LinkLocal)),
            ),
            ("::ffff:8.8.8.8", None),
            // IPv4-compatible (deprecated), but `::` and `::1` keep their own meaning.
            ("::127.0.0.1", Some(("127.0.0.1", Loopback))),
            ("::10.0.0.1", Some(("10.0.0.1", Private))),
            ("::0.0.0.2", Some(("0.0.0.2", Unspecified))),
            ("::8.8.8.8", None),
            ("::", Some(("::", Unspecified))),
            ("::1", Some(("::1", Loopback))),
            // IPv4-translated (SIIT).
            ("::ffff:0:192.168.1.1", Some(("192.168.1.1", Private))),
            ("::ffff:0:8.8.8.8", None),
            // NAT64 well-known prefix (/96 only).
            ("64:ff9b::127.0.0.1", Some(("127.0.0.1", Loopback))),
            ("64:ff9b::100.64.0.1", Some(("100.64.0.1", SharedCgnat))),
            ("64:ff9b::8.8.8.8", None),
            // NAT64 local-use prefix (RFC 8215), as /96 ...
            ("64:ff9b:1::127.0.0.1", Some(("127.0.0.1", Loopback))),
            ("64:ff9b:1::10.1.2.3", Some(("10.1.2.3", Private))),
            ("64:ff9b:1:abcd::8.8.8.8", None),
            ("64:ff9b:1::8.8.8.8", None),
            // ... as /48: 10.1.2.3 in bits 48..64 and 72..88.
            ("64:ff9b:1:a01:2:300::", Some(("10.1.2.3", Private))),
            // ... as /56: 192.168.7.9 in bits 56..64 and 72..96.
            ("64:ff9b:1:c0:a8:709::", Some(("192.168.7.9", Private))),
            // ... as /64: 127.0.0.1 in bits 72..104.
            ("64:ff9b:1:0:7f:0:100::", Some(("127.0.0.1", Loopback))),
            // 6to4.
            ("2002:7f00:1::1", Some(("127.0.0.1", Loopback))),
            ("2002:c0a8:101:1::1", Some(("192.168.1.1", Private))),
            ("2002:a9fe:a9fe::", Some(("169.254.169.254", LinkLocal))),
            ("2002:808:808::1", None),
            // Teredo: the client's address is inverted in the last 32 bits.
            (
                "2001:0:4136:e378:8000:63bf:80ff:fffe",
                Some(("127.0.0.1", Loopback)),
            ),
            (
                "2001:0:4136:e378:8000:63bf:f5ff:fffe",
                Some(("10.0.0.1", Private)),
            ),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
            // Teredo with a restricted server address.
            (
                "2001:0:a00:1:8000:63bf:f7f7:f7f7",
                Some(("10.0.0.1", Private)),
            ),
            // ISATAP interface identifiers, both values of the u/l bit.
            ("2001:db8::5efe:10.0.0.1", Some(("10.0.0.1", Private))),
            (
                "2001:db8::200:5efe:127.0.0.1",
                Some(("127.0.0.1", Loopback)),
            ),
            ("2001:db8::200:5efe:8.8.8.8", None),
            // Addresses that embed nothing are judged as themselves.
            ("2001:db8:1::1", None),
            ("2001:4860:4860::8888", None),
            ("fd00::1", Some(("fd00::1", UniqueLocal))),
        ];
        for (addr, want) in cases {
            let want = want.map(|(judged, class)| (ip(judged), class));
            assert_eq!(verdict(addr), want, "{addr}");
        }
    }

    #[test]
    fn refusal_of_an_embedded_address_names_both() {
        let err = TargetPolicy::new()
            .check("x", 80, ip("2002:7f00:1::1"))
            .unwrap_err();
        assert_eq!(err.embedded_in, Some("2002:7f00:1::1".parse().unwrap()));
        assert_eq!(
            err.to_string(),
            "127.0.0.1 (embedded in 2002:7f00:1::1) is a loopback address and not on the allow list"
        );
    }

    #[test]
    fn allow_rules_apply_to_embedded_addresses() {
        let policy = TargetPolicy {
            allow: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2002:7f00::/24".parse().unwrap(),
            ],
            allow_private: false,
        };
        // The embedded address is on the allow list.
        assert!(policy.check("x", 1, ip("2002:a00:1::1")).is_ok());
        // The IPv6 address itself is on the allow list.
        assert!(policy.check("x", 1, ip("2002:7f00:1::1")).is_ok());
        assert!(policy.check("x", 1, ip("2002:c0a8:101::1")).is_err());
    }

    #[test]
    fn default_policy_refuses_restricted_and_allows_public() {
        let policy = TargetPolicy::new();
        let err = policy.check("127.0.0.1", 80, ip("127.0.0.1")).unwrap_err();
        assert_eq!(
            err,
            Refused {
                ip: ip("127.0.0.1"),
                class: AddressClass::Loopback,
                embedded_in: None,
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
