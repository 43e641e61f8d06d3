//! Asynchronous upstream name resolution with TTL-honouring caching.
//!
//! Pingora's `HttpPeer::new(host)` resolves with blocking `getaddrinfo` and
//! panics on failure, so the request path never calls it with a name. IP
//! literals short-circuit; names go through hickory's async resolver (system
//! `resolv.conf` and `/etc/hosts`), whose cache keeps each answer for its TTL.
//! The resolver is built on first use, so a gateway whose upstreams are all
//! IP addresses never reads resolver config at all.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use hickory_resolver::TokioResolver;

/// Addresses of one name tried per request, at most.
pub const MAX_ADDRESSES: usize = 4;

#[derive(Default)]
pub struct Dns {
    resolver: OnceLock<Result<TokioResolver, String>>,
}

impl Dns {
    pub fn new() -> Self {
        Self::default()
    }

    fn resolver(&self) -> Result<&TokioResolver, String> {
        self.resolver
            .get_or_init(|| {
                TokioResolver::builder_tokio()
                    .and_then(|b| b.build())
                    .map_err(|e| format!("cannot read the system resolver configuration: {e}"))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Resolve `host:port` to its addresses, IPv4 first (loopback names
    /// and dual-stack hosts often answer only on one family), at most
    /// [`MAX_ADDRESSES`].
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        // Boxed: the resolver's lookup is a large future, held only while
        // it runs rather than in every attempt's.
        let lookup = Box::pin(self.resolver()?.lookup_ip(host))
            .await
            .map_err(|e| format!("DNS lookup of `{host}` failed: {e}"))?;
        let mut addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        addrs.sort_by_key(|a| a.is_ipv6());
        addrs.truncate(MAX_ADDRESSES);
        if addrs.is_empty() {
            return Err(format!("DNS lookup of `{host}` returned no addresses"));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn ip_literals_skip_the_resolver() {
        let dns = super::Dns::new();
        assert_eq!(dns.resolve("127.0.0.1", 9).await.unwrap()[0].to_string(), "127.0.0.1:9");
        assert_eq!(dns.resolve("::1", 9).await.unwrap()[0].to_string(), "[::1]:9");
        assert!(dns.resolver.get().is_none());
    }
}
