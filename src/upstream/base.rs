//! Where an upstream lives: an `api_base` split the way a connection needs it.

/// Where an upstream lives, split the way a connection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBase {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash (`""` for a bare host).
    pub path_prefix: String,
    /// The `Host` header value: host, plus the port when it is not the scheme's default.
    pub authority: String,
}

impl UpstreamBase {
    /// Parse an `api_base` URL. The error says what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            s => return Err(format!("scheme `{s}` is not supported; use http or https")),
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => return Err(format!("`{raw}` has no host")),
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err("api_base must not carry a query or fragment".into());
        }
        let port = url.port_or_known_default().unwrap_or(if tls { 443 } else { 80 });
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or(&host)),
            None => url.host_str().unwrap_or(&host).to_string(),
        };
        Ok(UpstreamBase {
            tls,
            host,
            port,
            path_prefix: url.path().trim_end_matches('/').to_string(),
            authority,
        })
    }

    /// The upstream path for a client path such as `/v1/messages`. A base that
    /// already ends in `/v1` is not doubled (`https://host/v1` + `/v1/messages`).
    pub fn join(&self, client_path: &str) -> String {
        let prefix = if client_path.starts_with("/v1/") {
            self.path_prefix.strip_suffix("/v1").unwrap_or(&self.path_prefix)
        } else {
            &self.path_prefix
        };
        let mut out = String::with_capacity(prefix.len() + client_path.len());
        out.push_str(prefix);
        out.push_str(client_path);
        out
    }
}
