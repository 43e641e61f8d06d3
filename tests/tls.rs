//! A TLS upstream that speaks HTTP/2, as api.anthropic.com and
//! api.openai.com do: the gateway negotiates h2 by ALPN, trusts a private CA
//! given through `SSL_CERT_FILE`, sends the authority once (`:authority`,
//! no `Host`), and reuses the connection.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use support::*;

#[derive(Debug, Clone)]
struct Seen {
    version: http::Version,
    host: Option<String>,
    authority: Option<String>,
    api_key: Option<String>,
}

struct TlsUpstream {
    addr: SocketAddr,
    ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

async fn start_tls_upstream() -> TlsUpstream {
    let pki = support::pki::Pki::new(&["localhost", "127.0.0.1"]);
    let acceptor = pki.acceptor(&[b"h2", b"http/1.1"]);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen2, conns2) = (seen.clone(), connections.clone());
    tokio::spawn(async move {
        // Bounded: a test makes a handful of connections.
        for _ in 0..64 {
            let Ok((tcp, _)) = listener.accept().await else { return };
            conns2.fetch_add(1, Ordering::Relaxed);
            let (acceptor, seen) = (acceptor.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
                    seen.lock().unwrap().push(Seen {
                        version: req.version(),
                        host: header("host"),
                        authority: req.uri().authority().map(|a| a.to_string()),
                        api_key: header("x-api-key"),
                    });
                    async move {
                        let body = anthropic_message_json("claude-opus-4-8", "over tls");
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsUpstream {
        addr,
        ca_pem: pki.ca_pem,
        seen,
        connections,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_http2_upstream_gets_one_authority_and_a_reused_connection() {
    let up = start_tls_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &up.ca_pem).unwrap();
    let yaml = format!(
        "listen: \"{{listen}}\"\ndefault_provider: tls\nproviders:\n  tls: {{type: anthropic, api_base: \"https://{}\", api_key: sk-tls}}\n",
        up.addr
    );
    let gw = Gateway::start_async(&yaml, &[("SSL_CERT_FILE", ca.to_str().unwrap())]).await;
    for _ in 0..3 {
        let r = client()
            .post(gw.url("/v1/messages"))
            .body(r#"{"model":"claude-opus-4-8","max_tokens":5,"messages":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("over tls"));
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.version, http::Version::HTTP_2, "ALPN negotiated h2");
        assert_eq!(s.authority.as_deref(), Some(up.addr.to_string().as_str()));
        assert_eq!(s.host, None, "the authority is sent once, as :authority");
        assert_eq!(s.api_key.as_deref(), Some("sk-tls"));
    }
    assert_eq!(
        up.connections.load(Ordering::Relaxed),
        1,
        "one TLS connection, multiplexed"
    );
}
