//! The sign-in's state in both stores, through the library: one scenario
//! run against an SQLite file and against a real PostgreSQL
//! (`tests/support/postgres.rs`). Device grants (pending, too-fast polls,
//! approval used once, denial, expiry), browser flows taken once, and
//! sessions (refresh-token rotation with its grace, revocation by token
//! and by user, the revoked list, the sweep).

mod support;

use modelgate::store::signin::{
    Decision, Flow, Identity, NewGrant, Poll, RevokeBy, Session, SigninStore, ROTATION_GRACE_MS, SLOW_DOWN_MS,
};

const T0: i64 = 1_800_000_000_000;
const INTERVAL: i64 = 5_000;

fn ada() -> Identity {
    Identity {
        subject: "00u-ada".into(),
        email: Some("ada@corp.example".into()),
        name: Some("Ada".into()),
        groups: vec!["eng".into()],
        idp_refresh: Some("sealed-idp-refresh".into()),
        current_refresh: None,
    }
}

fn grant(n: u32, surface: Option<&str>) -> NewGrant {
    NewGrant {
        device_hash: format!("device-{n}"),
        user_code: format!("BCDF-GH{n:02}"),
        created_ms: T0,
        expires_ms: T0 + 600_000,
        interval_ms: INTERVAL,
        surface: surface.map(String::from),
    }
}

async fn scenario(store: &SigninStore) {
    // A grant: pending, polled too fast, approved, used once.
    assert!(store.create_grant(grant(1, Some("claude_code"))).await.unwrap());
    let mut taken = grant(2, None);
    taken.user_code = "BCDF-GH01".into();
    assert!(
        !store.create_grant(taken).await.unwrap(),
        "a user code in use is refused"
    );
    assert_eq!(
        store.poll("device-1".into(), T0 + INTERVAL).await.unwrap(),
        Poll::Pending
    );
    assert_eq!(
        store.poll("device-1".into(), T0 + INTERVAL + 1_000).await.unwrap(),
        Poll::SlowDown
    );
    // The interval grew by 5 s: a poll 5 s later is still too fast.
    let slow = T0 + INTERVAL + 1_000 + INTERVAL + SLOW_DOWN_MS;
    assert_eq!(
        store.poll("device-1".into(), slow - 3_000).await.unwrap(),
        Poll::SlowDown
    );
    let pending = store.pending("BCDF-GH01".into(), T0 + 20_000).await.unwrap().unwrap();
    assert_eq!(pending.surface.as_deref(), Some("claude_code"));
    assert!(store.pending("BCDF-GH99".into(), T0).await.unwrap().is_none());
    assert!(store
        .decide("BCDF-GH01".into(), Decision::Approve(ada()), T0 + 20_000)
        .await
        .unwrap());
    assert!(
        !store
            .decide("BCDF-GH01".into(), Decision::Deny, T0 + 20_001)
            .await
            .unwrap(),
        "a grant is decided once"
    );
    assert!(store.pending("BCDF-GH01".into(), T0 + 20_000).await.unwrap().is_none());
    let after = slow + 2 * (INTERVAL + SLOW_DOWN_MS);
    assert_eq!(
        store.poll("device-1".into(), after).await.unwrap(),
        Poll::Approved {
            identity: ada(),
            surface: Some("claude_code".into())
        }
    );
    assert_eq!(
        store.poll("device-1".into(), after + 60_000).await.unwrap(),
        Poll::Unknown,
        "a device code works once"
    );

    // Denied, and expired.
    assert!(store.create_grant(grant(3, None)).await.unwrap());
    assert!(store.decide("BCDF-GH03".into(), Decision::Deny, T0 + 1).await.unwrap());
    assert_eq!(store.poll("device-3".into(), T0 + 60_000).await.unwrap(), Poll::Denied);
    assert_eq!(
        store.poll("device-3".into(), T0 + 120_000).await.unwrap(),
        Poll::Unknown
    );
    assert!(store.create_grant(grant(4, None)).await.unwrap());
    assert!(!store
        .decide("BCDF-GH04".into(), Decision::Approve(ada()), T0 + 600_000)
        .await
        .unwrap());
    assert_eq!(
        store.poll("device-4".into(), T0 + 600_000).await.unwrap(),
        Poll::Expired
    );

    // A browser flow is taken once, and not after it expired.
    let flow = Flow {
        state_hash: "state-1".into(),
        user_code: "BCDF-GH05".into(),
        browser_hash: "browser-1".into(),
        nonce: "nonce-1".into(),
        pkce_verifier: "verifier-1".into(),
        expires_ms: T0 + 600_000,
    };
    store.put_flow(flow.clone()).await.unwrap();
    assert_eq!(store.take_flow("state-1".into(), T0).await.unwrap(), Some(flow.clone()));
    assert_eq!(store.take_flow("state-1".into(), T0).await.unwrap(), None);
    store
        .put_flow(Flow {
            state_hash: "state-2".into(),
            ..flow
        })
        .await
        .unwrap();
    assert_eq!(store.take_flow("state-2".into(), T0 + 600_000).await.unwrap(), None);

    // Sessions: refresh with rotation, the replaced token's minute, revocation.
    let session = Session {
        id: "s1".into(),
        identity: ada(),
        surface: Some("claude_code".into()),
        created_ms: T0,
        refreshed_ms: T0,
        expires_ms: T0 + 30 * 86_400_000,
        revoked_ms: None,
        revoked_by: None,
        revoked_why: None,
    };
    store.create_session(session.clone(), "refresh-1".into()).await.unwrap();
    let r = store.refreshing("refresh-1".into(), T0 + 1).await.unwrap().unwrap();
    assert_eq!((r.session.id.as_str(), r.replaced), ("s1", false));
    assert_eq!(r.session.identity, ada());
    let mut moved = ada();
    moved.groups = vec!["data".into()];
    assert!(store
        .rotate(
            "s1".into(),
            "refresh-1".into(),
            "refresh-2".into(),
            moved.clone(),
            T0 + 3_600_000
        )
        .await
        .unwrap());
    let r = store
        .refreshing("refresh-2".into(), T0 + 3_600_001)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.replaced, r.session.identity.groups.clone()),
        (false, vec!["data".to_string()])
    );
    let r = store
        .refreshing("refresh-1".into(), T0 + 3_600_000 + ROTATION_GRACE_MS - 1)
        .await
        .unwrap();
    assert!(r.is_some_and(|r| r.replaced), "the replaced token works for a minute");
    assert!(store
        .refreshing("refresh-1".into(), T0 + 3_600_000 + ROTATION_GRACE_MS)
        .await
        .unwrap()
        .is_none());
    assert!(store.refreshing("refresh-x".into(), T0).await.unwrap().is_none());

    store
        .create_session(
            Session {
                id: "s2".into(),
                ..session.clone()
            },
            "refresh-s2".into(),
        )
        .await
        .unwrap();
    let mut grace = store
        .sessions(Some("ada@corp.example".into()), false, T0 + 3_600_002)
        .await
        .unwrap();
    grace.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(grace.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["s1", "s2"]);
    let revoked = store
        .revoke(
            RevokeBy::RefreshHash("refresh-2".into()),
            "client".into(),
            "signed out".into(),
            T0 + 3_700_000,
        )
        .await
        .unwrap();
    assert_eq!(revoked, ["s1"]);
    assert!(store
        .refreshing("refresh-2".into(), T0 + 3_700_001)
        .await
        .unwrap()
        .is_none());
    let revoked = store
        .revoke(
            RevokeBy::User("Ada@Corp.example".into()),
            "admin@host".into(),
            "offboarded".into(),
            T0 + 3_800_000,
        )
        .await
        .unwrap();
    assert_eq!(revoked, ["s2"], "only what was still active");
    let mut since = store.revoked_since(T0 + 3_600_000).await.unwrap();
    since.sort();
    assert_eq!(since, ["s1", "s2"]);
    assert_eq!(store.revoked_since(T0 + 3_750_000).await.unwrap(), ["s2"]);
    assert!(store.sessions(None, false, T0 + 3_800_001).await.unwrap().is_empty());
    let all = store.sessions(None, true, T0 + 3_800_001).await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all
        .iter()
        .any(|s| s.revoked_why.as_deref() == Some("offboarded") && s.revoked_by.as_deref() == Some("admin@host")));

    // The sweep: expired grants and flows; a revoked session after 30 days.
    assert!(store.create_grant(grant(6, None)).await.unwrap());
    store
        .put_flow(Flow {
            state_hash: "state-3".into(),
            user_code: "BCDF-GH06".into(),
            browser_hash: "b".into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            expires_ms: T0 + 600_000,
        })
        .await
        .unwrap();
    assert_eq!(
        store.sweep(T0 + 3_800_002).await.unwrap(),
        2,
        "the expired grant and flow"
    );
    assert_eq!(store.sweep(T0 + 3_800_000 + 30 * 86_400_000 + 1).await.unwrap(), 2);
    assert!(store.sessions(None, true, T0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_state_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SigninStore::sqlite(&dir.path().join("modelgate.db")).unwrap();
    scenario(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_state_in_postgres() {
    let Some(pg) = tokio::task::block_in_place(support::postgres::Postgres::start) else {
        return;
    };
    let db = pg.create_db("signin");
    let target = modelgate::store::postgres::Target::parse(&pg.url(&db)).unwrap();
    let store = SigninStore::connect(&target).await.unwrap();
    scenario(&store).await;
}
