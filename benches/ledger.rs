//! Usage ledger write throughput, 10k records a round:
//! - `record_and_flush_10k`: straight into the SQLite writer (WAL,
//!   `synchronous=NORMAL`) and the flush that puts them on disk;
//! - `intake_and_flush_10k`: the gateway's path, through the intake (each
//!   record journaled before it is handed on) into the same writer;
//! - `spool_append_10k`: the PostgreSQL store's spool, as it fills while
//!   the database is away (batches of 1,024, each written and fdatasynced).
//!
//! The gateway needs at least 20k records/s.
//!
//! Run: `cargo bench --bench ledger`

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use modelgate::store::spool::Spool;
use modelgate::store::sqlite::Ledger;
use modelgate::store::Location;
use modelgate::usage::Record;

const N: usize = 10_000;

/// Round `round`'s records: realistic rows (every optional field set, ids
/// the size real ones are) with timestamps after the previous round's, as in
/// a live gateway. Reusing timestamps would turn the (key, ts) index appends
/// into random inserts and measure something the gateway never does.
fn records(round: usize) -> Vec<Arc<Record>> {
    (0..N)
        .map(|i| {
            let seq = round * N + i;
            Arc::new(Record {
                ts_ms: 1_795_132_800_000 + seq as i64,
                request_id: format!("req_011CUmX{seq:016}"),
                key: Some(format!("developer-{}", i % 50)),
                team: Some(format!("team-{}", i % 5)),
                session_id: Some(format!("3f1c2b9e-8d4a-4c61-9a0e-{:012}", i % 40)),
                agent_id: (i % 3 == 0).then(|| format!("agent-{}", i % 7)),
                model: "claude-sonnet-4-5-20250929".into(),
                provider: Some("anthropic".into()),
                upstream_model: Some("claude-sonnet-4-5-20250929".into()),
                input_tokens: 1200 + i as u64,
                output_tokens: 350,
                cache_read_tokens: 48_000,
                cache_write_tokens: 900,
                cost_usd: 0.0321,
                latency_ms: 2400,
                ttft_ms: Some(600),
                status: 200,
                attempts: 1,
                stream: true,
                error: None,
            })
        })
        .collect()
}

/// Bench `name`: `write` takes each round's 10k fresh records.
fn rounds(c: &mut Criterion, name: &str, mut write: impl FnMut(Vec<Arc<Record>>)) {
    let mut round = 0;
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(20);
    g.bench_function(name, |b| {
        b.iter_batched(
            || {
                round += 1;
                records(round)
            },
            &mut write,
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn record_and_flush(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    // Queue as large as a round, so the bench measures the writer, not drops.
    let ledger = Ledger::open(&dir.path().join("bench.db"), N).expect("open");
    rounds(c, "record_and_flush_10k", |records| {
        for r in records {
            ledger.record(r);
        }
        ledger.flush(Duration::from_secs(60)).expect("flush");
    });
    assert_eq!(ledger.dropped(), 0, "a round must fit the queue");
    ledger.close(Duration::from_secs(60)).expect("close");
}

fn intake_and_flush(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = Location::Sqlite(dir.path().join("bench.db"));
    let ledger = modelgate::store::Ledger::open(&at, N).expect("open");
    rounds(c, "intake_and_flush_10k", |records| {
        for r in records {
            ledger.submit(r);
        }
        ledger.flush(Duration::from_secs(60)).expect("flush");
    });
    assert_eq!(ledger.dropped(), 0, "a round must fit the queue");
    ledger.close(Duration::from_secs(60)).expect("close");
}

fn spool_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spool = Spool::open(dir.path(), u64::MAX, 1).expect("open");
    rounds(c, "spool_append_10k", |records| {
        for batch in records.chunks(modelgate::store::MAX_BATCH) {
            spool.append(batch).expect("append");
        }
    });
}

criterion_group!(benches, record_and_flush, intake_and_flush, spool_append);
criterion_main!(benches);
