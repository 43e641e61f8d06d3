//! `modelgate health status|circuit-breakers`: ask a running gateway's
//! admin API (`/status`) and print what it says.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand, Debug)]
pub enum HealthCommand {
    /// Overall status: uptime, config version, providers.
    Status(Target),
    /// Circuit breaker state per provider account.
    CircuitBreakers(Target),
}

#[derive(clap::Args, Debug)]
pub struct Target {
    /// Admin base URL. Default: `admin_listen` from the config, else `listen`.
    #[arg(long, value_name = "URL")]
    admin: Option<String>,
    /// Admin key, when the admin endpoints are on the main listener.
    #[arg(long, env = "MODELGATE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
}

pub fn run(config: Option<PathBuf>, cmd: HealthCommand) -> i32 {
    let (target, circuits) = match cmd {
        HealthCommand::Status(t) => (t, false),
        HealthCommand::CircuitBreakers(t) => (t, true),
    };
    let base = match target
        .admin
        .clone()
        .map(Ok)
        .unwrap_or_else(|| admin_from_config(config))
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("modelgate: {e}");
            return 2;
        }
    };
    let status = match fetch_status(&base, target.admin_key.as_deref()) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("modelgate: {base}/status: {e}");
            return 1;
        }
    };
    if circuits {
        let list = status["circuits"].as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            out!("no circuits yet (no upstream traffic since start)");
        }
        for c in list {
            let remaining = c["remaining_seconds"]
                .as_f64()
                .map(|s| format!(" ({s:.0}s left)"))
                .unwrap_or_default();
            out!(
                "{:<30} {:<14}{remaining} failures in a row: {}, opened: {}",
                c["account"].as_str().unwrap_or("?"),
                c["state"].as_str().unwrap_or("?"),
                c["consecutive_failures"],
                c["opened_total"]
            );
        }
    } else {
        out!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    }
    0
}

fn admin_from_config(config: Option<PathBuf>) -> Result<String, String> {
    let path = super::config_path(config);
    let c = crate::config::load::load_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(format!("http://{}", c.admin_listen.unwrap_or(c.listen)))
}

/// A plain-HTTP GET through Pingora's own client (the admin API is local).
fn fetch_status(base: &str, key: Option<&str>) -> Result<Value, String> {
    let url = url::Url::parse(base).map_err(|e| e.to_string())?;
    if url.scheme() != "http" {
        return Err("the admin URL must be http://".into());
    }
    let host = url.host_str().ok_or("no host in the admin URL")?.to_string();
    let port = url.port_or_known_default().unwrap_or(80);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?
            .next()
            .ok_or("cannot resolve the admin host")?;
        let connector = pingora::connectors::http::Connector::new(None);
        let mut peer = pingora::upstreams::peer::HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(std::time::Duration::from_secs(3));
        peer.options.read_timeout = Some(std::time::Duration::from_secs(5));
        let (mut session, _) = connector.get_http_session(&peer).await.map_err(|e| e.to_string())?;
        let mut req = pingora::http::RequestHeader::build("GET", b"/status", None).map_err(|e| e.to_string())?;
        let _ = req.insert_header("host", format!("{host}:{port}"));
        if let Some(k) = key {
            let _ = req.insert_header("x-api-key", k);
        }
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| e.to_string())?;
        session.finish_request_body().await.map_err(|e| e.to_string())?;
        session.read_response_header().await.map_err(|e| e.to_string())?;
        let status = session.response_header().map(|h| h.status.as_u16()).unwrap_or(0);
        let mut body = Vec::new();
        while let Some(chunk) = session.read_response_body().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > 16 * 1024 * 1024 {
                return Err("status answer too large".to_string());
            }
        }
        if status != 200 {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    })
}
