//! A real OpenID provider for the sign-in tests: `oidc-provider` (npm,
//! pinned in `tests/clients/package.json`, run by the machine's Node.js
//! from `tests/clients/oidc/provider.mjs`) on a free loopback port, with
//! the gateway as its confidential client and test users from a JSON file
//! the test may rewrite (removing a user deprovisions them). `scripts/test`
//! installs it; elsewhere a test without it is skipped with a note unless
//! `MODELGATE_REQUIRE_OIDC=1`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub const CLIENT_ID: &str = "modelgate";
pub const CLIENT_SECRET: &str = "oidc-test-client-secret-0123456789";

pub struct OidcProvider {
    child: Child,
    pub port: u16,
    users: PathBuf,
    redirect_uri: String,
    groups_in_id_token: bool,
    _dir: tempfile::TempDir,
}

/// `tests/clients`, where the npm packages live.
fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Whether Node.js and the package are installed; when not, a note (or a
/// panic under `MODELGATE_REQUIRE_OIDC=1`).
pub fn installed() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let found = node && clients_dir().join("node_modules/oidc-provider/package.json").exists();
    if !found {
        assert!(
            std::env::var("MODELGATE_REQUIRE_OIDC").as_deref() != Ok("1"),
            "oidc-provider is required (MODELGATE_REQUIRE_OIDC=1) but Node.js or the package is missing"
        );
        eprintln!("skipping: oidc-provider is not installed (scripts/test installs it)");
    }
    found
}

impl OidcProvider {
    /// Start a provider whose only client redirects to `redirect_uri`, with
    /// `users` (`{"<id>": {"email", "name", "groups"}}`). `groups_in_id_token`
    /// false keeps email and groups to userinfo. `None` when not installed
    /// (and not required).
    pub fn start(redirect_uri: &str, users: &serde_json::Value, groups_in_id_token: bool) -> Option<OidcProvider> {
        if !installed() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let users_path = dir.path().join("users.json");
        std::fs::write(&users_path, users.to_string()).expect("write users");
        let mut last = String::new();
        for _ in 0..3 {
            let port = super::free_port();
            match spawn(port, &users_path, redirect_uri, groups_in_id_token) {
                Ok(child) => {
                    return Some(OidcProvider {
                        child,
                        port,
                        users: users_path,
                        redirect_uri: redirect_uri.to_string(),
                        groups_in_id_token,
                        _dir: dir,
                    })
                }
                Err(why) => last = why,
            }
        }
        panic!("oidc-provider did not start: {last}");
    }

    /// Stop it and start it again on the same port with a new signing key
    /// (a key rotation; sessions and codes it held are gone).
    pub fn restart_with_new_key(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.port, &self.users, &self.redirect_uri, self.groups_in_id_token)
            .unwrap_or_else(|why| panic!("oidc-provider did not restart: {why}"));
    }

    /// Stop it (an outage); [`OidcProvider::restart_with_new_key`] brings
    /// it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `http://127.0.0.1:PORT`, the issuer.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replace the users (read at every lookup, refreshes included).
    pub fn set_users(&self, users: &serde_json::Value) {
        let tmp = self.users.with_extension("tmp");
        std::fs::write(&tmp, users.to_string()).expect("write users");
        std::fs::rename(&tmp, &self.users).expect("replace users");
    }
}

/// One provider process on `port`, ready.
fn spawn(port: u16, users: &std::path::Path, redirect_uri: &str, groups_in_id_token: bool) -> Result<Child, String> {
    let mut child = Command::new("node")
        .arg(clients_dir().join("oidc/provider.mjs"))
        .current_dir(clients_dir())
        .env("OIDC_PORT", port.to_string())
        .env("OIDC_USERS", users)
        .env("OIDC_CLIENT_ID", CLIENT_ID)
        .env("OIDC_CLIENT_SECRET", CLIENT_SECRET)
        .env("OIDC_REDIRECT_URI", redirect_uri)
        .env("OIDC_GROUPS_IN_ID_TOKEN", if groups_in_id_token { "1" } else { "0" })
        .env("OIDC_KID", format!("key-{}", rand_kid()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn node: {e}"))?;
    match wait_ready(&mut child) {
        Ok(()) => Ok(child),
        Err(why) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(why)
        }
    }
}

fn rand_kid() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Read the child's stdout until `READY`, for at most [`READY_TIMEOUT`]; its
/// stderr then goes on being drained so the pipe never fills.
fn wait_ready(child: &mut Child) -> Result<(), String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !line.contains("WARNING") {
                eprintln!("oidc-provider: {line}");
            }
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut ready = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !ready && line.starts_with("READY ") {
                ready = true;
                let _ = tx.send(());
            }
        }
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(()) => Ok(()),
        Err(_) => match child.try_wait() {
            Ok(Some(status)) => Err(format!("exited: {status}")),
            _ => Err(format!("not ready within {READY_TIMEOUT:?}")),
        },
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser for the sign-in tests: a cookie jar, redirects followed by
/// hand (so a test sees where each one goes), and the IdP's login and
/// consent forms submitted as a person would.
pub struct Browser {
    pub http: reqwest::Client,
}

/// Where a walk ended: the URL it was sent to, and the body of the last
/// page it read.
#[derive(Debug)]
pub struct Landed {
    pub url: String,
    pub status: u16,
    pub body: String,
}

/// The first `<form … action="…">` of `html`, and its hidden inputs.
pub fn form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        let end = tag[at..].find('"')? + at;
        Some(
            tag[at..end]
                .replace("&amp;", "&")
                .replace("&#x2F;", "/")
                .replace("&#47;", "/")
                .replace("&quot;", "\""),
        )
    };
    let start = html.find("<form")?;
    let tag_end = html[start..].find('>')? + start;
    let action = attr(&html[start..tag_end], "action")?;
    let body_end = html[start..].find("</form>").map_or(html.len(), |e| e + start);
    let mut fields = Vec::new();
    let mut rest = &html[tag_end..body_end];
    while let Some(i) = rest.find("<input") {
        let end = rest[i..].find('>').map_or(rest.len(), |e| e + i);
        let tag = &rest[i..end];
        if tag.contains("type=\"hidden\"") {
            if let (Some(n), Some(v)) = (attr(tag, "name"), attr(tag, "value")) {
                fields.push((n, v));
            }
        }
        rest = &rest[end..];
    }
    Some((action, fields))
}

impl Browser {
    pub fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        }
    }

    /// `GET url`, then follow redirects and submit the IdP's forms (login
    /// as `login`, consent) until a redirect goes to a URL starting with
    /// `stop` (returned without being fetched) or a page that is not one
    /// of the IdP's forms (returned). At most 20 steps.
    pub async fn walk(&self, url: &str, stop: &str, login: &str) -> Landed {
        let mut next = self.http.get(url);
        let mut at = url.to_string();
        for _ in 0..20 {
            let resp = next.send().await.expect("browser request");
            let status = resp.status().as_u16();
            if let Some(loc) = resp.headers().get("location").and_then(|v| v.to_str().ok()) {
                let target = reqwest::Url::parse(&at)
                    .and_then(|base| base.join(loc))
                    .expect("redirect target")
                    .to_string();
                if target.starts_with(stop) {
                    return Landed {
                        url: target,
                        status,
                        body: String::new(),
                    };
                }
                at = target;
                next = self.http.get(&at);
                continue;
            }
            let body = resp.text().await.unwrap_or_default();
            let idp_form =
                body.contains("name=\"prompt\" value=\"login\"") || body.contains("name=\"prompt\" value=\"consent\"");
            let Some((action, mut fields)) = form(&body).filter(|_| idp_form) else {
                return Landed { url: at, status, body };
            };
            if body.contains("value=\"login\"") {
                fields.push(("login".into(), login.into()));
                fields.push(("password".into(), "any".into()));
            }
            let target = reqwest::Url::parse(&at)
                .and_then(|b| b.join(&action))
                .expect("form action")
                .to_string();
            at = target.clone();
            next = self.http.post(target).form(&fields);
        }
        panic!("the browser walk from {url} did not end within 20 steps");
    }
}

/// Send `req` and read its JSON body (panicking on a transport error).
pub async fn json(req: reqwest::RequestBuilder) -> serde_json::Value {
    let resp = req.send().await.expect("request");
    resp.json().await.expect("a JSON body")
}

impl Default for Browser {
    fn default() -> Self {
        Browser::new()
    }
}
