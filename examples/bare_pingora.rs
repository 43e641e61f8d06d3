//! The floor under modelgate in `benches/e2e/run.sh`: the smallest Pingora
//! reverse proxy (no parsing, no routing, no metering; Pingora's own proxy
//! phases and connection pool), with the same allocator, thread count and
//! runtime layout.
//! The benchmark reports it next to the nginx hop so the table shows how
//! much of the gap is Pingora's and how much is modelgate's.
//!
//! `cargo run --release --example bare_pingora -- LISTEN UPSTREAM THREADS`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream.as_str(), false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM [THREADS]");
        std::process::exit(2);
    };
    let threads = args
        .get(3)
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // A work-stealing runtime, Pingora's default and modelgate's; `STEAL=0`
    // for one runtime per thread instead.
    let conf = ServerConf {
        threads,
        work_stealing: std::env::var("STEAL").map_or(true, |v| v != "0"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            upstream: upstream.clone(),
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
