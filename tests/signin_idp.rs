//! The gateway's OpenID Connect client (`modelgate::signin::idp`) against a
//! real provider (`tests/support/oidc.rs`: oidc-provider on a free loopback
//! port), through the library: the code flow with PKCE as a browser walks
//! it, the id_token verified (a wrong nonce refused), groups from the
//! id_token or from userinfo, a refresh, a user removed at the provider
//! refused at the next refresh, and a provider that rotated its signing key.

mod support;

use std::time::Duration;

use modelgate::signin::idp::{Idp, IdpConfig, IdpError, User};
use support::oidc::{Browser, OidcProvider, CLIENT_ID, CLIENT_SECRET};

const REDIRECT: &str = "http://127.0.0.1:9/oauth/callback";

fn users() -> serde_json::Value {
    serde_json::json!({"ada": {"email": "ada@corp.example", "name": "Ada", "groups": ["eng", "data"]}})
}

fn config(idp: &OidcProvider, rediscover_every: Duration) -> IdpConfig {
    IdpConfig {
        issuer: idp.issuer(),
        client_id: CLIENT_ID.into(),
        client_secret: Some(CLIENT_SECRET.into()),
        redirect_uri: REDIRECT.into(),
        groups_claim: "groups".into(),
        scopes: ["email", "profile", "groups", "offline_access"]
            .map(String::from)
            .to_vec(),
        authorize_params: Vec::new(),
        rediscover_every,
    }
}

/// Walk the browser through the provider; the callback's code.
async fn code_for(client: &Idp, login: &str) -> (String, modelgate::signin::idp::Authorization) {
    let auth = client.authorize();
    assert!(auth.url.contains("code_challenge_method=S256"), "{}", auth.url);
    let landed = Browser::new().walk(&auth.url, REDIRECT, login).await;
    let back = reqwest::Url::parse(&landed.url).unwrap();
    let q: std::collections::HashMap<_, _> = back.query_pairs().into_owned().collect();
    assert_eq!(q.get("state"), Some(&auth.state), "{landed:?}");
    (q.get("code").expect("a code").clone(), auth)
}

fn assert_ada(user: &User) {
    assert_eq!(user.subject, "ada");
    assert_eq!(user.email.as_deref(), Some("ada@corp.example"));
    assert_eq!(user.name.as_deref(), Some("Ada"));
    assert_eq!(user.groups, ["eng", "data"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn signs_in_refreshes_and_finds_a_removed_user_out() {
    let Some(idp) = OidcProvider::start(REDIRECT, &users(), true) else {
        return;
    };
    let client = Idp::discover(config(&idp, Duration::from_secs(60))).await.unwrap();
    let (code, auth) = code_for(&client, "ada").await;
    let user = client.finish(&code, &auth.nonce, &auth.pkce_verifier).await.unwrap();
    assert_ada(&user);
    let refresh = user.refresh_token.clone().expect("a refresh token");
    let refreshed = client.refresh(&refresh).await.unwrap();
    assert_ada(&refreshed);
    let rotated = refreshed.refresh_token.unwrap();
    assert_ne!(rotated, refresh, "the provider rotates its refresh tokens");

    // Removed at the provider: the next refresh is refused, not an outage.
    idp.set_users(&serde_json::json!({}));
    let gone = client.refresh(&rotated).await;
    assert!(matches!(gone, Err(IdpError::Refused(_))), "{gone:?}");
    idp.set_users(&users());

    // A code is used once (the provider then also revokes what it gave for
    // it), and a wrong nonce is refused.
    let again = client.finish(&code, &auth.nonce, &auth.pkce_verifier).await;
    assert!(matches!(again, Err(IdpError::Refused(_))), "{again:?}");
    let (code, auth) = code_for(&client, "ada").await;
    let wrong = client.finish(&code, "another-nonce", &auth.pkce_verifier).await;
    assert!(matches!(wrong, Err(IdpError::Invalid(_))), "{wrong:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_come_from_userinfo_when_the_id_token_lacks_them() {
    let Some(idp) = OidcProvider::start(REDIRECT, &users(), false) else {
        return;
    };
    let client = Idp::discover(config(&idp, Duration::from_secs(60))).await.unwrap();
    let (code, auth) = code_for(&client, "ada").await;
    let user = client.finish(&code, &auth.nonce, &auth.pkce_verifier).await.unwrap();
    assert_ada(&user);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_signing_key_is_read_again() {
    let Some(mut idp) = OidcProvider::start(REDIRECT, &users(), true) else {
        return;
    };
    // Keys read at discovery; then the provider comes back with a new one.
    let client = Idp::discover(config(&idp, Duration::ZERO)).await.unwrap();
    tokio::task::block_in_place(|| idp.restart_with_new_key());
    let (code, auth) = code_for(&client, "ada").await;
    let user = client.finish(&code, &auth.nonce, &auth.pkce_verifier).await.unwrap();
    assert_ada(&user);

    // Without re-reading (a minute not yet passed), the new key is unknown.
    let strict = Idp::discover(config(&idp, Duration::from_secs(60))).await.unwrap();
    tokio::task::block_in_place(|| idp.restart_with_new_key());
    let (code, auth) = code_for(&strict, "ada").await;
    let refused = strict.finish(&code, &auth.nonce, &auth.pkce_verifier).await;
    assert!(matches!(refused, Err(IdpError::Invalid(_))), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_provider_is_an_outage_not_a_refusal() {
    let port = support::free_port();
    let config = IdpConfig {
        issuer: format!("http://127.0.0.1:{port}"),
        client_id: CLIENT_ID.into(),
        client_secret: None,
        redirect_uri: REDIRECT.into(),
        groups_claim: "groups".into(),
        scopes: vec![],
        authorize_params: Vec::new(),
        rediscover_every: Duration::from_secs(60),
    };
    let err = Idp::discover(config).await.err().expect("no provider there");
    assert!(matches!(err, IdpError::Unreachable { .. }), "{err}");
}
