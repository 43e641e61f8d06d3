//! The Vertex token source (`upstream::google_auth`) against the mock Google
//! token endpoint: the JWT grant it sends verifies, tokens are cached and
//! shared, failures are bounded and never quote a secret, bad key files are
//! refused when the config loads.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modelgate::upstream::google_auth::{self, GoogleAuthError, TokenSource, FETCH_TIMEOUT};
use serde_json::json;
use support::free_port;
use support::google::{test_key_pem, write_service_account, MockTokenEndpoint, CLIENT_EMAIL};

/// Upper bound for any one test step.
const STEP: Duration = Duration::from_secs(30);

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.expect("test step took over 30 s")
}

/// Strings that must never show up in an error or a Debug line.
fn secrets() -> Vec<String> {
    let pem = test_key_pem();
    let mut s: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(|l| l[..l.len().min(16)].to_string())
        .collect();
    s.push("ya29.".into());
    s
}

fn assert_no_secret(text: &str) {
    for secret in secrets() {
        assert!(!text.contains(&secret), "`{secret}` leaked into: {text}");
    }
}

#[tokio::test]
async fn fetches_from_the_token_uri_then_serves_from_cache() {
    let mock = MockTokenEndpoint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let source = TokenSource::from_file(&write_service_account(dir.path(), &mock.url())).unwrap();
    assert_eq!(source.client_email(), CLIENT_EMAIL);

    let first = bounded(source.token()).await.unwrap();
    assert_eq!(first, "ya29.mock-1");
    assert!(mock.is_issued(&first));
    assert_eq!(mock.token_requests(), 1);

    let second = bounded(source.token()).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(mock.token_requests(), 1, "the second token came from the cache");

    let debug = format!("{source:?}");
    assert!(debug.contains(CLIENT_EMAIL), "{debug}");
    assert_no_secret(&debug);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_fetch() {
    let mock = MockTokenEndpoint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(TokenSource::from_file(&write_service_account(dir.path(), &mock.url())).unwrap());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let source = source.clone();
            tokio::spawn(async move { source.token().await })
        })
        .collect();
    for task in tasks {
        let token = bounded(task).await.unwrap().unwrap();
        assert_eq!(token, "ya29.mock-1");
    }
    assert_eq!(mock.token_requests(), 1, "20 callers on a cold cache, one fetch");
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed() {
    let mock = MockTokenEndpoint::start().await;
    // gcp_auth refreshes 20 s before expiry, so a 5 s token is stale at once.
    mock.set_expires_in(5);
    let dir = tempfile::tempdir().unwrap();
    let source = TokenSource::from_file(&write_service_account(dir.path(), &mock.url())).unwrap();
    assert_eq!(bounded(source.token()).await.unwrap(), "ya29.mock-1");
    assert_eq!(bounded(source.token()).await.unwrap(), "ya29.mock-2");
    assert_eq!(mock.token_requests(), 2);

    mock.set_expires_in(3600);
    assert_eq!(bounded(source.token()).await.unwrap(), "ya29.mock-3");
    assert_eq!(bounded(source.token()).await.unwrap(), "ya29.mock-3");
    assert_eq!(mock.token_requests(), 3);
}

#[tokio::test]
async fn an_unreachable_endpoint_fails_fast_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let token_uri = format!("http://127.0.0.1:{}/token", free_port());
    let source = TokenSource::from_file(&write_service_account(dir.path(), &token_uri)).unwrap();
    let started = Instant::now();
    let err = bounded(source.token()).await.unwrap_err();
    assert!(started.elapsed() < FETCH_TIMEOUT, "took {:?}", started.elapsed());
    assert!(matches!(err, GoogleAuthError::Fetch { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(CLIENT_EMAIL) && text.contains(&token_uri), "{text}");
    assert!(text.to_lowercase().contains("connect"), "says why: {text}");
    assert_no_secret(&text);
    assert_no_secret(&format!("{err:?}"));
}

#[tokio::test]
async fn a_hung_endpoint_times_out() {
    let mock = MockTokenEndpoint::start().await;
    mock.set_stall(true);
    let dir = tempfile::tempdir().unwrap();
    let source = TokenSource::from_file(&write_service_account(dir.path(), &mock.url()))
        .unwrap()
        .with_fetch_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = bounded(source.token()).await.unwrap_err();
    assert!(matches!(err, GoogleAuthError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("did not answer"), "{err}");
    assert_no_secret(&err.to_string());
}

#[tokio::test]
async fn a_refused_grant_is_an_error_without_secrets() {
    let mock = MockTokenEndpoint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_service_account(dir.path(), &mock.url());
    // Same key, another account: the mock refuses the assertion's `iss`.
    let mut file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    file["client_email"] = json!("someone-else@modelgate-test.iam.gserviceaccount.com");
    std::fs::write(&path, file.to_string()).unwrap();
    let source = TokenSource::from_file(&path).unwrap();
    let err = bounded(source.token()).await.unwrap_err();
    assert!(matches!(err, GoogleAuthError::Fetch { .. }), "{err:?}");
    assert!(mock.token_requests() >= 1);
    assert_eq!(mock.issued_count(), 0);
    assert!(err.to_string().contains("error status"), "{err}");
    assert_no_secret(&err.to_string());
}

#[tokio::test]
async fn the_mock_refuses_a_bad_assertion() {
    let mock = MockTokenEndpoint::start().await;
    let resp = bounded(
        reqwest::Client::new()
            .post(mock.url())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
            ])
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(mock.issued_count(), 0);
    assert!(!mock.is_issued("ya29.mock-1"));
}

/// Write `contents` to a file and return `from_file`'s error text.
fn refusal(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    let err = TokenSource::from_file(&path).expect_err(name);
    let text = err.to_string();
    assert!(text.contains(name), "names the file: {text}");
    assert_no_secret(&text);
    assert_no_secret(&format!("{err:?}"));
    text
}

/// Checks happen at config load, with no runtime: a plain test.
#[test]
fn malformed_key_files_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let good: serde_json::Value = serde_json::from_slice(
        &std::fs::read(write_service_account(dir.path(), "https://oauth2.googleapis.com/token")).unwrap(),
    )
    .unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut v = good.clone();
        v[key] = value;
        v.to_string()
    };
    let without = |key: &str| {
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove(key);
        v.to_string()
    };

    let text = refusal(dir.path(), "truncated.json", &good.to_string()[..200]);
    assert!(text.contains("not valid JSON"), "{text}");
    let text = refusal(dir.path(), "no-email.json", &without("client_email"));
    assert!(text.contains("`client_email` is missing"), "{text}");
    let text = refusal(dir.path(), "no-key.json", &without("private_key"));
    assert!(text.contains("`private_key` is missing"), "{text}");
    let text = refusal(dir.path(), "user.json", &with("type", json!("authorized_user")));
    assert!(text.contains("`authorized_user` credentials"), "{text}");
    let text = refusal(
        dir.path(),
        "clear.json",
        &with("token_uri", json!("http://oauth2.example.com/token")),
    );
    assert!(text.contains("must use https"), "{text}");
    // A key that is cut short: the message says what is wrong, not what is there.
    let pem = test_key_pem();
    let text = refusal(
        dir.path(),
        "bad-key.json",
        &with("private_key", json!(pem[..pem.len() / 2])),
    );
    assert!(text.contains("PKCS#8"), "{text}");
    let text = refusal(dir.path(), "key-as-string.json", &json!(pem).to_string());
    assert!(text.contains("not a JSON object"), "{text}");

    let missing = dir.path().join("absent.json");
    let text = TokenSource::from_file(&missing).unwrap_err().to_string();
    assert!(text.contains("cannot read") && text.contains("absent.json"), "{text}");

    // The good file is fine and needs no runtime to load.
    let ok = TokenSource::from_file(&dir.path().join("service-account.json")).unwrap();
    assert_eq!(ok.client_email(), CLIENT_EMAIL);
}

#[tokio::test]
async fn source_for_shares_a_source_until_the_file_changes() {
    let mock = MockTokenEndpoint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_service_account(dir.path(), &mock.url());
    let a = google_auth::source_for(&path).unwrap();
    let b = google_auth::source_for(&path).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "same file, same source");
    assert_eq!(bounded(a.token()).await.unwrap(), "ya29.mock-1");
    assert_eq!(bounded(b.token()).await.unwrap(), "ya29.mock-1");
    assert_eq!(mock.token_requests(), 1, "a reload keeps the cached token");

    let mut contents = std::fs::read_to_string(&path).unwrap();
    contents.push('\n');
    std::fs::write(&path, contents).unwrap();
    let c = google_auth::source_for(&path).unwrap();
    assert!(!Arc::ptr_eq(&a, &c), "a changed file makes a new source");
    assert_eq!(bounded(c.token()).await.unwrap(), "ya29.mock-2");

    assert!(google_auth::source_for(&dir.path().join("absent.json")).is_err());
}
