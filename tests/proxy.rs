//! `modelgate proxy`, the HTTP forward proxy, through the binary: plain
//! requests relayed (hop-by-hop fields removed, `Via` added, no query in
//! the log), a CONNECT tunnel to a TLS server whose certificate the client
//! verifies through the tunnel, retries (a GET after a dropped connection
//! or a 503; a POST never after its bytes were sent; connect errors for
//! any method), refused private destinations, a client leaving mid-tunnel,
//! and the drain on SIGTERM.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn proxied_client(proxy: &Gateway) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy.url("")).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Read an HTTP message head (and nothing after it) from `s`.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert!(head.len() < 16 * 1024, "head too long");
        let n = tokio::time::timeout(IO_TIMEOUT, s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed inside a head: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0)
}

/// Send `CONNECT target` on a new connection to the proxy; the head of its answer.
async fn connect_via(proxy: &Gateway, target: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

/// Send `bytes` through a tunnel to the echo origin and read as many back.
async fn echoed(s: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    s.write_all(bytes).await.unwrap();
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    back
}

/// A TCP server that echoes each connection, counting connections closed.
async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let closed2 = closed.clone();
    tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let closed = closed2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                // Bounded: ends at the client's close or after 1000 reads.
                for _ in 0..1000 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                closed.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, closed)
}

/// What a scripted origin does with the connection of that ordinal.
#[derive(Clone, Copy)]
enum Act {
    /// Read the request, then close without answering.
    Drop,
    /// Answer with this status and `attempt N` as the body.
    Reply(u16),
}

/// An HTTP/1.1 origin that follows `acts` connection by connection (then
/// answers 200); one request per connection. Returns its address and the
/// number of connections taken.
async fn scripted_origin(acts: Vec<Act>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let taken2 = taken.clone();
    tokio::spawn(async move {
        for i in 0..acts.len() + 8 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            taken2.fetch_add(1, Ordering::SeqCst);
            let act = acts.get(i).copied().unwrap_or(Act::Reply(200));
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                let mut body = vec![0u8; content_length(&head)];
                tokio::time::timeout(IO_TIMEOUT, s.read_exact(&mut body))
                    .await
                    .unwrap()
                    .unwrap();
                if let Act::Reply(status) = act {
                    let text = format!("attempt {}", i + 1);
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                }
            });
        }
    });
    (addr, taken)
}

/// Poll (bounded) until `f` holds.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_requests_are_relayed_without_hop_by_hop_fields() {
    let up = MockUpstream::start().await;
    up.set_default(Reply::json(200, r#"{"ok":true}"#).with_header("x-origin", "yes"));
    let proxy = Gateway::start_proxy_async("{}\n", &["--allow", "127.0.0.1:*"]).await;
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::all(proxy.url(""))
                .unwrap()
                .basic_auth("me", "proxy-secret"),
        )
        .build()
        .unwrap();
    let resp = client
        .post(format!("{}/v1/things?token=query-secret", up.base_url()))
        .header("connection", "x-hop")
        .header("x-hop", "must not pass")
        .header("x-end-to-end", "kept")
        .header("host", "somewhere-else.example")
        .body("a body of bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-origin"], "yes");
    assert_eq!(resp.headers()["via"], "1.1 modelgate");
    assert_eq!(resp.text().await.unwrap(), r#"{"ok":true}"#);

    let seen = up.wait_requests(1, IO_TIMEOUT).await;
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.uri.as_str()),
        ("POST", "/v1/things?token=query-secret")
    );
    assert_eq!(r.body_str(), "a body of bytes");
    assert_eq!(r.header("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(r.header("via").as_deref(), Some("1.1 modelgate"));
    assert_eq!(r.header("host"), Some(up.addr().to_string()));
    for gone in ["x-hop", "proxy-authorization", "proxy-connection"] {
        assert_eq!(r.header(gone), None, "{gone} reached the origin");
    }

    // One access line, without the query or the proxy credential.
    let line_seen = || {
        proxy
            .logs()
            .contains(&format!("POST http://{}/v1/things?… 200", up.addr()))
    };
    eventually("the access line", line_seen).await;
    let logs = proxy.logs();
    // `me:proxy-secret` travels base64-encoded in Proxy-Authorization.
    for secret in ["query-secret", "proxy-secret", "bWU6cHJveHktc2VjcmV0"] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
    }
    assert!(logs.contains("sent=15 received=11"), "{logs}");

    // Origin-form requests are not proxy requests.
    let direct = reqwest::get(proxy.url("/v1/messages")).await.unwrap();
    assert_eq!(direct.status(), 400);
    let body: serde_json::Value = direct.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

struct TlsOrigin {
    addr: SocketAddr,
    ca_pem: String,
}

/// An HTTPS origin for `localhost` with a private CA.
async fn tls_origin() -> TlsOrigin {
    let pki = support::pki::Pki::new(&["localhost"]);
    let acceptor = pki.acceptor(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..8 {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let body = format!("secret over tls: {}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                        hyper::body::Bytes::from(body),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsOrigin {
        addr,
        ca_pem: pki.ca_pem,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_tunnels_tls_that_the_client_verifies_end_to_end() {
    let origin = tls_origin().await;
    let proxy = Gateway::start_proxy_async("proxy:\n  allow: [\"localhost:*\"]\n", &[]).await;
    let ca = reqwest::Certificate::from_pem(origin.ca_pem.as_bytes()).unwrap();
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy.url("")).unwrap())
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/hello", origin.addr.port());
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "secret over tls: /hello");

    // A client that does not trust the CA fails the handshake through the
    // tunnel: the proxy passes the origin's certificate, not one of its own.
    let untrusting = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy.url("")).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(untrusting.get(&url).send().await.is_err());

    drop(client);
    let tunnel_line = format!("CONNECT localhost:{} 200", origin.addr.port());
    eventually("the tunnel's access line", || proxy.logs().contains(&tunnel_line)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_requests_retry_and_posts_never_resend() {
    let proxy = Gateway::start_proxy_async(
        "{}\n",
        &["--allow", "127.0.0.1:*", "--max-retries", "2", "--retry-delay", "0.01"],
    )
    .await;
    let client = proxied_client(&proxy);

    // A GET whose first connection is dropped unanswered, then a 503: the third answers.
    let (origin, taken) = scripted_origin(vec![Act::Drop, Act::Reply(503), Act::Reply(200)]).await;
    let resp = client.get(format!("http://{origin}/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "attempt 3");
    assert_eq!(taken.load(Ordering::SeqCst), 3);

    // A POST whose connection is dropped after its bytes went: not sent again.
    let (origin, taken) = scripted_origin(vec![Act::Drop]).await;
    let resp = client
        .post(format!("http://{origin}/charge"))
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(taken.load(Ordering::SeqCst), 1, "the POST was sent twice");

    // A POST answered 503 is relayed as it is, not retried.
    let (origin, taken) = scripted_origin(vec![Act::Reply(503)]).await;
    let resp = client
        .post(format!("http://{origin}/charge"))
        .body("once")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(taken.load(Ordering::SeqCst), 1);

    // Nothing listens: a connect error, retried for a POST too (nothing was sent).
    let closed = free_port();
    let resp = client
        .post(format!("http://127.0.0.1:{closed}/charge"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let line = format!("POST http://127.0.0.1:{closed}/charge 502");
    eventually("the failed POST's access line", || proxy.logs().contains(&line)).await;
    let logs = proxy.logs();
    let post = logs.lines().find(|l| l.contains(&line)).unwrap();
    assert!(post.ends_with("attempts=3"), "{post}");

    // The proxy is no destination of its own (even where loopback is allowed).
    let (_s, head) = connect_via(&proxy, &proxy.addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 508"), "{head}");
    // User information in a URI is refused, not passed on.
    let (origin, taken) = scripted_origin(vec![]).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("GET http://user:pw@{origin}/x HTTP/1.1\r\nHost: {origin}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(taken.load(Ordering::SeqCst), 0);

    // CONNECT retries its connect too, and then says 502.
    let (_s, head) = connect_via(&proxy, &format!("127.0.0.1:{closed}")).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn private_destinations_are_refused_unless_allowed() {
    let up = MockUpstream::start().await;
    let (echo, _) = echo_server().await;
    let proxy = Gateway::start_proxy_async("proxy:\n  allow: [\"*.corp.internal:443\"]\n", &[]).await;
    let client = proxied_client(&proxy);

    let resp = client.get(format!("{}/v1/models", up.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("private or reserved range") && message.contains("--allow"),
        "{message}"
    );

    for target in [
        echo.to_string(),
        format!("localhost:{}", echo.port()),
        "[::1]:22".to_string(),
    ] {
        let (mut s, head) = connect_via(&proxy, &target).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{target}: {head}");
        let mut body = vec![0u8; content_length(&head)];
        s.read_exact(&mut body).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["type"], "permission_error");
    }
    // The proxy itself is refused too (a private address, here).
    let (_s, head) = connect_via(&proxy, &proxy.addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(up.request_count(), 0);

    // Malformed rules stop the proxy before it listens.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["proxy", "-p", "0", "--allow", "a*b.example:443"])
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`*` must be a whole label"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_mid_tunnel_closes_it_and_a_drain_waits_for_tunnels() {
    let (echo, closed) = echo_server().await;
    let mut proxy = Gateway::start_proxy_async("{}\n", &["--allow", "127.0.0.1:*"]).await;

    let (mut s, head) = connect_via(&proxy, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(echoed(&mut s, b"ping!").await, b"ping!");
    drop(s);
    eventually("the origin's side of the tunnel closing", || {
        closed.load(Ordering::SeqCst) == 1
    })
    .await;
    let line = format!("CONNECT {echo} 200 sent=5 received=5");
    eventually("the tunnel's access line", || proxy.logs().contains(&line)).await;

    // SIGTERM with a tunnel open: the tunnel keeps working; once it closes
    // the proxy exits (long before the 15-minute grace period).
    let (mut s, head) = connect_via(&proxy, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(proxy.signal("TERM"));
    eventually("the drain to begin", || proxy.logs().contains("SIGTERM")).await;
    assert_eq!(echoed(&mut s, b"still").await, b"still");
    assert!(proxy.is_running());
    drop(s);
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("the proxy exits once drained");
    assert!(status.success(), "{status:?}\n{}", proxy.logs());
    assert!(proxy.logs().contains("drained"), "{}", proxy.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_proxy_takes_the_socket_over_and_the_old_one_drains() {
    use std::os::unix::fs::FileTypeExt;
    let (echo, _) = echo_server().await;
    let mut old = Gateway::start_proxy_async("{}\n", &["--allow", "127.0.0.1:*"]).await;
    let port = old.port().to_string();
    let sock = std::path::PathBuf::from(format!("/tmp/modelgate-proxy-{port}.upgrade.sock"));
    let _ = std::fs::remove_file(&sock);
    let (mut tunnel, head) = connect_via(&old, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The new process waits on the upgrade socket for the listening socket.
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(["proxy", "-p", &port, "-u", "--allow", "127.0.0.1:*"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut new = Gateway {
        child,
        addr: old.addr,
        dir,
    };
    let is_socket = || std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket());
    for _ in 0..400 {
        if is_socket() {
            break;
        }
        assert!(new.is_running(), "{}", new.logs());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(is_socket(), "the new proxy never listened on {}", sock.display());
    assert!(old.signal("QUIT"));

    // The old process's tunnel keeps working after the hand-over. (Pingora
    // keeps accepting on the shared socket in the old process for 5 s, so
    // a new connection may still land there meanwhile.)
    assert_eq!(echoed(&mut tunnel, b"after").await, b"after");
    drop(tunnel);
    let status = old
        .wait_exit(Duration::from_secs(20))
        .expect("the old proxy exits once drained");
    assert!(status.success(), "{status:?}");

    // Now every connection is the new process's.
    assert!(new.is_running(), "{}", new.logs());
    let (mut s, head) = connect_via(&new, &echo.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.shutdown().await.unwrap();
    drop(s);
    let line = format!("CONNECT {echo} 200");
    eventually("the new process's access line", || new.logs().contains(&line)).await;
}
