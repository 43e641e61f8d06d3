//! Which destinations the forward proxy may reach.
//!
//! Any public address may be reached. Addresses that lead back into the
//! host or the organisation's network (loopback, private, link-local,
//! shared carrier-grade NAT, unique-local, multicast, reserved) are refused
//! unless an allow rule names the destination: `--allow HOST:PORT` or the
//! file's `proxy.allow`. In a rule `*` matches any port, or any one label of
//! a host name (`*.corp.internal:443`); a lone `*` host matches every host.
//!
//! The check runs on the addresses the name resolved to, and the proxy
//! connects to exactly those addresses (never resolving again), so a name
//! that answers with a public address to the check and a private one to the
//! connect (DNS rebinding) cannot slip through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One `HOST:PORT` allow rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    host: HostPattern,
    /// `None` matches any port.
    port: Option<u16>,
}

/// What a rule's host matches. A name pattern matches names only and an
/// address pattern addresses only, so `10.*.*.*` can never be satisfied by
/// a name like `10.evil.example` that resolves to whatever its owner likes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: every host, named or not.
    Any,
    /// Lower-case labels, `*` matching any one label.
    Name(Vec<String>),
    /// Four octets, `None` for a `*` octet.
    V4([Option<u8>; 4]),
    V6(Ipv6Addr),
}

impl Rule {
    /// Parse `host:port`, `*.example.com:*`, `[::1]:8080`, `10.*.*.*:*`.
    pub fn parse(text: &str) -> Result<Rule, String> {
        let bad = |why: &str| {
            format!("proxy allow rule `{text}`: {why} (expected HOST:PORT, `*` for any port or host label)")
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| bad("an IPv6 host needs `[addr]:port`"))?;
            let v6 = h.parse::<Ipv6Addr>().map_err(|_| bad("not an IPv6 address"))?;
            (HostPattern::V6(v6), p)
        } else {
            let (h, p) = text.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            if h.contains(':') {
                return Err(bad("write an IPv6 host as `[addr]:port`"));
            }
            (Self::parse_host(h).map_err(&bad)?, p)
        };
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad("the port is not 1-65535 or `*`"))?,
            ),
        };
        Ok(Rule { host, port })
    }

    fn parse_host(host: &str) -> Result<HostPattern, &'static str> {
        if host.is_empty() {
            return Err("no host");
        }
        if host == "*" {
            return Ok(HostPattern::Any);
        }
        let labels: Vec<String> = host.split('.').map(str::to_ascii_lowercase).collect();
        if labels.iter().any(|l| l.is_empty() || (l.contains('*') && l != "*")) {
            return Err("`*` must be a whole label");
        }
        if !labels.iter().all(|l| l == "*" || l.bytes().all(|b| b.is_ascii_digit())) {
            return Ok(HostPattern::Name(labels));
        }
        // Digits and `*` only: an IPv4 address pattern.
        let octets: Vec<Option<u8>> = labels
            .iter()
            .map(|l| if l == "*" { Ok(None) } else { l.parse::<u8>().map(Some) })
            .collect::<Result<_, _>>()
            .map_err(|_| "not an IPv4 address (octets are 0-255)")?;
        <[Option<u8>; 4]>::try_from(octets)
            .map(HostPattern::V4)
            .map_err(|_| "not an IPv4 address (four octets)")
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.');
        match (&self.host, host.parse::<std::net::IpAddr>()) {
            (HostPattern::Any, _) => true,
            (HostPattern::V4(want), Ok(IpAddr::V4(ip))) => {
                want.iter().zip(ip.octets()).all(|(w, o)| w.is_none_or(|w| w == o))
            }
            (HostPattern::V6(want), Ok(IpAddr::V6(ip))) => *want == ip,
            (HostPattern::Name(want), Err(_)) => {
                let labels = host.split('.');
                labels.clone().count() == want.len()
                    && labels.zip(want).all(|(l, r)| r == "*" || l.eq_ignore_ascii_case(r))
            }
            _ => false,
        }
    }
}

/// The compiled allow rules.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    rules: Vec<Rule>,
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host}:{port} resolves to {addr}, which is in a private or reserved range; allow it with --allow or proxy.allow"
)]
pub struct Denied {
    pub host: String,
    pub port: u16,
    pub addr: IpAddr,
}

impl AllowList {
    pub fn new(rules: impl IntoIterator<Item = impl AsRef<str>>) -> Result<AllowList, String> {
        Ok(AllowList {
            rules: rules
                .into_iter()
                .map(|r| Rule::parse(r.as_ref()))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a rule names `host:port` itself (as written by the client).
    fn names(&self, host: &str, port: u16) -> bool {
        self.rules.iter().any(|r| r.matches(host, port))
    }

    /// The addresses `host:port` may be connected to: all of `resolved`,
    /// when a rule names the destination (by name or by address) or every
    /// address is public; otherwise the first private one is the refusal.
    pub fn check(&self, host: &str, port: u16, resolved: &[SocketAddr]) -> Result<(), Denied> {
        if self.names(host, port) {
            return Ok(());
        }
        for a in resolved {
            if !is_public(a.ip()) && !self.names(&a.ip().to_string(), port) {
                return Err(Denied {
                    host: host.to_string(),
                    port,
                    addr: a.ip(),
                });
            }
        }
        Ok(())
    }
}

/// Whether `ip` is an ordinary public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
            // NAT64 (64:ff9b::/96) carries an IPv4 address in its last 32
            // bits; 6to4 (2002::/16) in the 32 after the prefix.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return is_public_v4(v4(s[6], s[7]));
            }
            if s[0] == 0x2002 {
                return is_public_v4(v4(s[1], s[2]));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32 (an IPv4 tunnel)
                || s[..3] == [0x64, 0xff9b, 1] // local-use NAT64 64:ff9b:1::/48
                || s[..5] == [0, 0, 0, 0, 0xffff] // IPv4-translated ::ffff:0:0:0/96
                || s[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible ::a.b.c.d
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0 // "this network" 0.0.0.0/8
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || (a == 100 && (b & 0xc0) == 64) // shared address space 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0.0/24
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || a >= 240) // reserved 240.0.0.0/4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_reserved_ranges_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2001:0:4136:e378::1",
            "64:ff9b:1::a00:1",
            "::ffff:0:7f00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} counted as public");
        }
        for ip in [
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
            "64:ff9b::101:101",
            "2002:101:101::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} counted as private");
        }
    }

    #[test]
    fn rules_match_ports_and_whole_labels() {
        let r = Rule::parse("*.corp.internal:443").unwrap();
        assert!(r.matches("git.corp.internal", 443));
        assert!(r.matches("GIT.Corp.Internal.", 443));
        assert!(!r.matches("git.corp.internal", 80));
        assert!(!r.matches("a.b.corp.internal", 443));
        assert!(!r.matches("corp.internal", 443));
        let any = Rule::parse("127.0.0.1:*").unwrap();
        assert!(any.matches("127.0.0.1", 1) && any.matches("127.0.0.1", 65535) && !any.matches("127.0.0.2", 1));
        assert!(Rule::parse("*:8080").unwrap().matches("anything.example", 8080));
        let v6 = Rule::parse("[::1]:9000").unwrap();
        assert!(v6.matches("[0:0::1]", 9000) && v6.matches("::1", 9000) && !v6.matches("::2", 9000));
        let range = Rule::parse("10.*.*.*:*").unwrap();
        assert!(range.matches("10.2.3.4", 80) && !range.matches("11.2.3.4", 80));
    }

    #[test]
    fn address_patterns_never_match_names() {
        // A name that looks like the pattern resolves to whatever its owner likes.
        let range = Rule::parse("192.168.*.*:*").unwrap();
        assert!(!range.matches("192.168.evil.example", 80));
        let allow = AllowList::new(["10.*.*.*:*"]).unwrap();
        assert!(allow.check("10.evil.example", 80, &[addr("127.0.0.1:80")]).is_err());
        assert_eq!(allow.check("10.evil.example", 80, &[addr("10.0.0.9:80")]), Ok(()));
        // And a name pattern never matches an address.
        let name = Rule::parse("*.*.*.internal:*").unwrap();
        assert!(!name.matches("10.0.0.1", 80));
    }

    #[test]
    fn malformed_rules_say_what_is_wrong() {
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:70000",
            ":80",
            "a*.b:80",
            "a..b:80",
            "[::1:80",
            "[zz]:80",
            "::1:80",
            "10.0.0:80",
            "10.0.0.256:80",
        ] {
            let e = Rule::parse(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn private_destinations_need_a_rule() {
        let none = AllowList::default();
        let public = [addr("93.184.216.34:443")];
        assert_eq!(none.check("example.com", 443, &public), Ok(()));
        let e = none.check("localhost", 8080, &[addr("127.0.0.1:8080")]).unwrap_err();
        assert_eq!(e.addr.to_string(), "127.0.0.1");
        // One private address among public ones is enough to refuse.
        let mixed = [addr("93.184.216.34:80"), addr("10.0.0.1:80")];
        assert!(none.check("rebind.example", 80, &mixed).is_err());

        let allow = AllowList::new(["127.0.0.1:*", "*.corp.internal:443"]).unwrap();
        assert_eq!(allow.check("127.0.0.1", 3000, &[addr("127.0.0.1:3000")]), Ok(()));
        // Allowed by address although named differently.
        assert_eq!(allow.check("localhost", 3000, &[addr("127.0.0.1:3000")]), Ok(()));
        assert_eq!(allow.check("git.corp.internal", 443, &[addr("10.2.3.4:443")]), Ok(()));
        assert!(allow.check("git.corp.internal", 22, &[addr("10.2.3.4:22")]).is_err());
        assert!(allow.check("localhost", 3000, &[addr("[::1]:3000")]).is_err());
    }
}
