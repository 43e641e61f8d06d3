//! Micro benchmarks of the request path's CPU work, on the realistic
//! ~105 KB Claude Code request fixture.
//!
//! Run: `cargo bench --bench request_path`

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue};
use modelgate::config::load::parse_str;
use modelgate::dialects::anthropic::{forward_request_headers, MessagesRequest, UpstreamAuth};
use modelgate::runtime::Snapshot;
use modelgate::upstream::balance;

fn fixture() -> Bytes {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/claude_code_request.json");
    Bytes::from(std::fs::read(path).expect("fixture present"))
}

fn parse_and_splice(c: &mut Criterion) {
    let body = fixture();
    let mut g = c.benchmark_group("anthropic_request");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("parse_model_stream", |b| {
        b.iter(|| MessagesRequest::parse(black_box(body.clone())).expect("valid"))
    });
    let req = MessagesRequest::parse(body.clone()).expect("valid");
    g.bench_function("splice_model", |b| {
        b.iter(|| black_box(&req).body_with_model(Some("claude-sonnet-5")))
    });
    g.finish();
}

fn headers(c: &mut Criterion) {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "gw"),
        ("authorization", "Bearer mg-key"),
        ("anthropic-version", "2023-06-01"),
        (
            "anthropic-beta",
            "claude-code-20250219,context-1m-2025-08-07,interleaved-thinking-2025-05-14",
        ),
        ("x-claude-code-session-id", "5d1f1c3e-1f5e-4c1e-9f61-2d7b1b8c1a10"),
        ("user-agent", "claude-cli/2.1.197 (external, cli)"),
        ("x-app", "cli"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("content-type", "application/json"),
        ("content-length", "105000"),
    ] {
        h.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
    }
    c.bench_function("forward_request_headers", |b| {
        b.iter(|| forward_request_headers(black_box(&h), UpstreamAuth::ProviderKey("sk-ant-x"), &[]))
    });
}

fn routing(c: &mut Criterion) {
    // 200 rules; the request matches the last glob, so every rule is tried.
    let mut yaml = String::from("default_provider: a\nproviders:\n  a: {type: anthropic}\n  b:\n    type: anthropic\n    keys: [{api_key: k1, weight: 2}, {api_key: k2}, {api_key: k3}]\nroutes:\n");
    for i in 0..199 {
        yaml.push_str(&format!("  - {{match: 'team{i}-model-*', provider: a}}\n"));
    }
    yaml.push_str("  - {match: 'claude-*', provider: b, fallbacks: [a]}\n");
    let env = |_: &str| None;
    let snap = Snapshot::build(parse_str(&yaml, &env).expect("yaml"), &env).expect("valid");
    let none = |_: &HeaderName| None;
    let session = HeaderValue::from_static("5d1f1c3e-1f5e-4c1e-9f61-2d7b1b8c1a10");
    c.bench_function("route_resolve_200_rules_and_pick_account", |b| {
        b.iter(|| {
            let plan = snap.resolve(black_box("claude-opus-4-8"), &none).expect("plan");
            let key = balance::session_key(session.as_bytes());
            let accounts: Vec<(&str, u32)> = plan.candidates[0]
                .provider
                .accounts
                .iter()
                .map(|a| (a.label.as_str(), a.weight))
                .collect();
            black_box(balance::rank(&accounts, key))
        })
    });
}

fn metrics(c: &mut Criterion) {
    use modelgate::telemetry::{status_class, METRICS};
    c.bench_function("metrics_record_one_request", |b| {
        b.iter(|| {
            let m = &*METRICS;
            m.in_flight.inc();
            m.attempts.with_label_values(&["anthropic", "ok"]).inc();
            m.requests
                .with_label_values(&["anthropic", "claude-opus-4-8", status_class(black_box(200)), "none"])
                .inc();
            m.duration.with_label_values(&["anthropic"]).observe(black_box(1.25));
            m.ttft.with_label_values(&["anthropic"]).observe(black_box(0.4));
            m.tokens
                .with_label_values(&["anthropic", "output"])
                .inc_by(black_box(120));
            m.in_flight.dec();
        })
    });
}

/// A reload's CPU work: parse, validate and compile a config with 200
/// routes and 1,000 gateway keys (the file read is not included).
fn reload(c: &mut Criterion) {
    let mut yaml = String::from(
        "default_provider: a\nproviders:\n  a: {type: anthropic}\n  b: {type: openai, api_key: k}\nroutes:\n",
    );
    for i in 0..200 {
        yaml.push_str(&format!(
            "  - {{match: 'team{i}-*', provider: b, model: gpt-4o, fallbacks: [a]}}\n"
        ));
    }
    yaml.push_str("keys:\n");
    for i in 0..1000 {
        let hash = format!("{:064x}", i + 1);
        yaml.push_str(&format!(
            "  - {{name: dev{i}, team: t{}, key_sha256: '{hash}', models: ['claude-*', 'team*']}}\n",
            i % 20
        ));
    }
    let env = |_: &str| None;
    c.bench_function("reload_200_routes_1000_keys", |b| {
        b.iter(|| Snapshot::build(parse_str(black_box(&yaml), &env).expect("yaml"), &env).expect("valid"))
    });
}

/// The policy stage as a request sees it: authenticate one of 1,000 keys
/// (sha256 + map lookup), admit against key and team limits and budgets,
/// and settle. Embedded backend; with `MODELGATE_BENCH_REDIS_URL` set, the
/// same against that Redis (one script call each way).
fn policy(c: &mut Criterion) {
    use modelgate::dialects::Usage;
    use modelgate::gateway::auth::{authenticate, Caller};
    use modelgate::policy::{period, Actual, Demand, Policy};
    let mut yaml = String::from(
        "default_provider: a\nproviders:\n  a: {type: anthropic}\nteams:\n  t0: {rate_limit: {rpm: 1000000000}, budget: {usd: 1000000000, period: monthly}}\nkeys:\n",
    );
    for i in 0..1000 {
        let hash = hex::encode(modelgate::runtime::snapshot::sha256(format!("mg-key-{i}").as_bytes()));
        yaml.push_str(&format!(
            "  - {{name: k{i}, team: t0, key_sha256: \"{hash}\", rate_limit: {{rpm: 1000000000, tpm: 1000000000000}}, budget: {{usd: 1000000000, period: daily}}}}\n"
        ));
    }
    let env = |_: &str| None;
    let snap = Snapshot::build(parse_str(&yaml, &env).expect("yaml"), &env).expect("valid");
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", HeaderValue::from_static("mg-key-500"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut backends = vec![("embedded", modelgate::config::schema::StateConfig::default())];
    if let Ok(url) = std::env::var("MODELGATE_BENCH_REDIS_URL") {
        let state = modelgate::config::schema::StateConfig {
            backend: modelgate::config::schema::StateBackend::Redis,
            redis_url: Some(url),
            redis_prefix: "bench".into(),
            ..Default::default()
        };
        backends.push(("redis", state));
    }
    let ring = modelgate::runtime::keyring::KeyRing::default();
    for (name, state) in backends {
        let policy = Policy::new(&state).expect("policy");
        c.bench_function(&format!("policy_auth_admit_settle_{name}"), |b| {
            b.iter(|| {
                let Ok(Caller::Key(key)) = authenticate(&snap, &ring, black_box(&headers)) else {
                    panic!("key")
                };
                rt.block_on(async {
                    let scopes = key.scopes();
                    let demand = Demand {
                        tokens: 25_000,
                        reserve_nanos: 400_000_000,
                    };
                    let admission = policy.admit(&scopes, demand, period::now_ms()).await.expect("admit");
                    let usage = Usage {
                        input_tokens: 20,
                        output_tokens: 300,
                        cache_read_input_tokens: 24_000,
                        cache_creation_input_tokens: 1_000,
                    };
                    policy
                        .settle(
                            admission,
                            Actual {
                                usage,
                                cost_nanos: 50_000_000,
                            },
                        )
                        .await;
                })
            })
        });
    }
}

criterion_group!(benches, parse_and_splice, headers, routing, metrics, reload, policy);
criterion_main!(benches);
