//! A mock Google OAuth token endpoint: hyper 1 HTTP/1.1 server on 127.0.0.1:0.
//!
//! `POST /token` with the JWT-bearer grant
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`)
//! answers `{"access_token":"ya29.mock-N","expires_in":3600,"token_type":"Bearer"}`
//! when the assertion is an RS256 JWT signed by the fixture key
//! (`tests/fixtures/google/test-key.pem`) with `iss` = [`CLIENT_EMAIL`],
//! `aud` = this endpoint's URL, the cloud-platform scope and an `exp` in the
//! future. Anything else gets 400 `{"error":"invalid_grant"}`.
//!
//! [`write_service_account`] writes a service-account file for that key
//! whose `token_uri` points here; a Vertex mock checks bearers with
//! [`MockTokenEndpoint::is_issued`]. Dropping the mock stops it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::signature::{KeyPair, RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The service account the fixture key belongs to (in this test world only).
pub const CLIENT_EMAIL: &str = "modelgate-test@modelgate-test.iam.gserviceaccount.com";
pub const PROJECT_ID: &str = "modelgate-test";
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long a [`Stall`](MockTokenEndpoint::set_stall)ed request is held at most.
const STALL_MAX: Duration = Duration::from_secs(30);

/// The fixture key, PKCS#8 PEM.
pub fn test_key_pem() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/google/test-key.pem");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Write `service-account.json` for the fixture key into `dir`, with
/// `token_uri` as given; returns its path.
pub fn write_service_account(dir: &Path, token_uri: &str) -> PathBuf {
    let file = json!({
        "type": "service_account",
        "project_id": PROJECT_ID,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": test_key_pem(),
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    });
    let path = dir.join("service-account.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&file).expect("serialise SA file"))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

struct State {
    token_uri: String,
    /// DER `RSAPublicKey` of the fixture key.
    public_key: Vec<u8>,
    requests: AtomicUsize,
    issued: Mutex<HashSet<String>>,
    expires_in: AtomicU64,
    stall: AtomicBool,
}

pub struct MockTokenEndpoint {
    addr: SocketAddr,
    state: Arc<State>,
    /// Dropping this stops the accept loop and every connection task.
    _shutdown: watch::Sender<()>,
}

impl MockTokenEndpoint {
    /// Bind 127.0.0.1:0 and spawn the accept loop on the current tokio runtime.
    pub async fn start() -> MockTokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("token mock: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("token mock: local_addr");
        let der = pem_to_der(&test_key_pem());
        let key = RsaKeyPair::from_pkcs8(&der).expect("fixture key is PKCS#8 RSA");
        let state = Arc::new(State {
            token_uri: format!("http://{addr}/token"),
            public_key: key.public_key().as_ref().to_vec(),
            requests: AtomicUsize::new(0),
            issued: Mutex::new(HashSet::new()),
            expires_in: AtomicU64::new(3600),
            stall: AtomicBool::new(false),
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(());
        tokio::spawn(accept_loop(listener, state.clone(), shutdown_rx));
        MockTokenEndpoint {
            addr,
            state,
            _shutdown: shutdown_tx,
        }
    }

    /// `http://127.0.0.1:PORT/token`: the `token_uri` to put in a service-account file.
    pub fn url(&self) -> String {
        self.state.token_uri.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests received on any path, valid or not.
    pub fn token_requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Whether `token` is an access token this endpoint issued (a bearer check).
    pub fn is_issued(&self, token: &str) -> bool {
        self.state.issued.lock().unwrap().contains(token)
    }

    /// Tokens issued so far.
    pub fn issued_count(&self) -> usize {
        self.state.issued.lock().unwrap().len()
    }

    /// `expires_in` of the tokens issued from now on (default 3600). Below
    /// about 20 s, clients treat the token as already expiring and refresh
    /// it on every use.
    pub fn set_expires_in(&self, seconds: u64) {
        self.state.expires_in.store(seconds, Ordering::SeqCst);
    }

    /// Read each request, then never answer (until the connection is
    /// dropped, the mock is, or 30 s pass).
    pub fn set_stall(&self, stall: bool) {
        self.state.stall.store(stall, Ordering::SeqCst);
    }
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
    STANDARD.decode(b64).expect("fixture key is base64 PEM")
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut shutdown: watch::Receiver<()>) {
    // Runs until the mock is dropped (the shutdown sender goes away).
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                eprintln!("token mock: accept error: {e}");
                // Avoid a hot loop on persistent errors (e.g. EMFILE).
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = state.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(state.clone(), req));
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, BoxError> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    state.requests.fetch_add(1, Ordering::SeqCst);
    if state.stall.load(Ordering::SeqCst) {
        tokio::time::sleep(STALL_MAX).await;
    }
    if parts.method != hyper::Method::POST || parts.uri.path() != "/token" {
        return Ok(reply(StatusCode::NOT_FOUND, json!({"error": "not_found"})));
    }
    match check_grant(&state, &body) {
        Ok(()) => {
            let token = {
                let mut issued = state.issued.lock().unwrap();
                let token = format!("ya29.mock-{}", issued.len() + 1);
                issued.insert(token.clone());
                token
            };
            let expires_in = state.expires_in.load(Ordering::SeqCst);
            Ok(reply(
                StatusCode::OK,
                json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}),
            ))
        }
        Err(why) => {
            eprintln!("token mock: invalid grant: {why}");
            Ok(reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "invalid_grant", "error_description": why}),
            ))
        }
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

/// Check the form body's JWT-bearer grant; `Err` says what is wrong.
fn check_grant(state: &State, body: &[u8]) -> Result<(), String> {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("no `{name}` in the form"))
    };
    if field("grant_type")? != GRANT_TYPE {
        return Err("grant_type is not jwt-bearer".into());
    }
    let jwt = field("assertion")?;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [head, claims, signature] = parts[..] else {
        return Err("assertion is not a three-part JWT".into());
    };
    // Base64url, padded or not (Google accepts both, and clients differ).
    let b64 = GeneralPurpose::new(
        &URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let decode = |part: &str| b64.decode(part).map_err(|e| format!("bad base64url: {e}"));
    let json = |part: &str| -> Result<Value, String> {
        serde_json::from_slice(&decode(part)?).map_err(|e| format!("not JSON: {e}"))
    };
    if json(head)?["alg"] != "RS256" {
        return Err("alg is not RS256".into());
    }
    let signed = &jwt[..head.len() + 1 + claims.len()];
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &state.public_key)
        .verify(signed.as_bytes(), &decode(signature)?)
        .map_err(|_| "signature does not verify with the fixture key".to_string())?;
    let claims = json(claims)?;
    if claims["iss"] != CLIENT_EMAIL {
        return Err(format!("iss is {}, not {CLIENT_EMAIL}", claims["iss"]));
    }
    if claims["aud"] != state.token_uri.as_str() {
        return Err(format!("aud is {}, not {}", claims["aud"], state.token_uri));
    }
    let scope = claims["scope"].as_str().unwrap_or("");
    if !scope.split(' ').any(|s| s == CLOUD_PLATFORM) {
        return Err(format!("scope `{scope}` lacks cloud-platform"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    match claims["exp"].as_i64() {
        Some(exp) if exp > now => Ok(()),
        Some(_) => Err("assertion has expired".into()),
        None => Err("no exp".into()),
    }
}
