//! `modelgate usage` against a ledger written through the library API.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use modelgate::store::sqlite::Ledger;
use modelgate::usage::Record;

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn record(i: u32, key: &str, model: &str, ts_ms: i64, cost_usd: f64, status: u16) -> Arc<Record> {
    Arc::new(Record {
        ts_ms,
        request_id: format!("req_{i}"),
        key: Some(key.into()),
        team: Some("platform".into()),
        model: model.into(),
        provider: Some("anthropic".into()),
        input_tokens: 1000,
        output_tokens: 100,
        cache_read_tokens: 5000,
        cache_write_tokens: 10,
        cost_usd,
        latency_ms: 100 * u64::from(i),
        status,
        attempts: 1,
        error: (status >= 400).then(|| "overloaded_error".to_string()),
        ..Record::default()
    })
}

/// Two models in the last week, plus an old record `--since 7d` leaves out.
fn seed(path: &Path) {
    let now = now_ms();
    let ledger = Ledger::open(path, 64).unwrap();
    for r in [
        record(1, "alice", "claude-opus-4-1", now - DAY_MS, 0.5, 200),
        record(2, "bob", "claude-opus-4-1", now - 2 * DAY_MS, 0.25, 529),
        record(3, "alice", "claude-haiku-4-5", now - 3 * DAY_MS, 0.0125, 200),
        record(4, "alice", "claude-opus-4-1", now - 10 * DAY_MS, 99.0, 200),
    ] {
        assert!(ledger.record(r));
    }
    ledger.close(Duration::from_secs(10)).unwrap();
    assert_eq!(ledger.written(), 4);
}

fn modelgate(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modelgate"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_by_model_prints_an_aligned_table_with_a_total() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    seed(&db);
    let (code, out, err) = modelgate(
        &["usage", "--db", db.to_str().unwrap(), "--by", "model", "--since", "7d"],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("usage since "), "{out}");
    assert!(lines[0].ends_with(&format!("from sqlite:{}", db.display())), "{out}");
    let cols = |line: &str| {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        cols(lines[1]),
        [
            "MODEL",
            "REQUESTS",
            "INPUT",
            "OUTPUT",
            "CACHE READ",
            "CACHE WRITE",
            "COST USD",
            "ERRORS",
            "AVG LATENCY"
        ]
    );
    // Biggest spender first; the 10-day-old record is outside the window.
    assert_eq!(
        cols(lines[2]),
        [
            "claude-opus-4-1",
            "2",
            "2000",
            "200",
            "10000",
            "20",
            "0.7500",
            "1",
            "150 ms"
        ]
    );
    assert_eq!(
        cols(lines[3]),
        [
            "claude-haiku-4-5",
            "1",
            "1000",
            "100",
            "5000",
            "10",
            "0.0125",
            "0",
            "300 ms"
        ]
    );
    assert_eq!(
        cols(lines[4]),
        ["TOTAL", "3", "3000", "300", "15000", "30", "0.7625", "1", "200 ms"]
    );
    assert_eq!(lines.len(), 5, "{out}");
    // Aligned: every row of the table is as wide as the header.
    let width = lines[1].len();
    assert!(lines[2..].iter().all(|l| l.len() == width), "{out}");
}

#[test]
fn usage_json_is_an_array_of_groups() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    seed(&db);
    let (code, out, err) = modelgate(
        &[
            "usage",
            "--db",
            db.to_str().unwrap(),
            "--by",
            "model",
            "--since",
            "7d",
            "--json",
        ],
        dir.path(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().expect("an array");
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0]["group"], "claude-opus-4-1");
    assert_eq!(rows[0]["requests"], 2);
    assert_eq!(rows[0]["input_tokens"], 2000);
    assert_eq!(rows[0]["output_tokens"], 200);
    assert_eq!(rows[0]["cache_read_tokens"], 10000);
    assert_eq!(rows[0]["cache_write_tokens"], 20);
    assert_eq!(rows[0]["cost_usd"], 0.75);
    assert_eq!(rows[0]["errors"], 1);
    assert_eq!(rows[0]["avg_latency_ms"], 150.0);
    assert_eq!(rows[1]["group"], "claude-haiku-4-5");

    // The default window (30 days) and grouping (key) take in the old record.
    let (code, out, _) = modelgate(&["usage", "--db", db.to_str().unwrap(), "--json"], dir.path());
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["group"], "alice");
    assert_eq!(rows[0]["requests"], 3);
    assert_eq!(rows[1]["group"], "bob");
}

#[test]
fn usage_reads_state_path_from_the_config_relative_to_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    seed(&dir.path().join("ledger.db"));
    std::fs::write(
        dir.path().join("gw.yaml"),
        "default_provider: anthropic
providers:
  anthropic: {type: anthropic}
state: {path: ./ledger.db}
",
    )
    .unwrap();
    let (code, out, err) = modelgate(&["usage", "-c", "gw.yaml", "--by", "day", "--json"], dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 4, "{out}");
    let days: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["group"].as_str().unwrap())
        .collect();
    let mut sorted = days.clone();
    sorted.sort();
    assert_eq!(days, sorted, "days in date order");
    assert!(
        days.iter().all(|d| d.len() == 10 && d.as_bytes()[4] == b'-'),
        "{days:?}"
    );
}

#[test]
fn a_missing_ledger_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("none.db");
    let (code, out, err) = modelgate(&["usage", "--db", db.to_str().unwrap()], dir.path());
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(
        err.trim(),
        format!(
            "no usage recorded yet at {} (the gateway creates it on first start)",
            db.display()
        )
    );
    assert!(!db.exists(), "reading must not create the ledger");
}

#[test]
fn an_empty_window_and_a_bad_since_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("usage.db");
    seed(&db);
    let (code, out, _) = modelgate(&["usage", "--db", db.to_str().unwrap(), "--since", "1m"], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("no requests in this window"), "{out}");
    let (code, out, _) = modelgate(
        &["usage", "--db", db.to_str().unwrap(), "--since", "1m", "--json"],
        dir.path(),
    );
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]");
    let (code, _, err) = modelgate(&["usage", "--db", db.to_str().unwrap(), "--since", "soon"], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("neither a duration"), "{err}");
}

#[test]
fn help_says_which_ledger_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = modelgate(&["usage", "--help"], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("store.url"), "{out}");
    assert!(out.contains("this node's requests only"), "{out}");
}
