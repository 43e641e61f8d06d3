//! `modelgate usage`: requests, tokens and spend from the usage ledger
//! (`store.url`: the fleet's PostgreSQL database, or this node's SQLite
//! file at `state.path`), grouped by key, team, model or UTC day. It only
//! reads the store, so it works with or without a running gateway.

use std::path::PathBuf;

use clap::ValueEnum;

use crate::store::{GroupBy, Location, Reader, Since, SummaryRow, Totals};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The ledger is where `store.url` says: a PostgreSQL database shared by the fleet (every replica's \
requests), or by default the SQLite file at `state.path` (default ./modelgate.db, relative to the \
current directory as for the gateway), which holds this node's requests only.

Examples:
  modelgate usage --by team --since 24h
  modelgate usage --by day --since 2026-11-01 --json")]
pub struct UsageArgs {
    /// What each row is.
    #[arg(long, value_enum, default_value_t = By::Key)]
    by: By,
    /// Start of the window: a duration back from now (`7d`, `24h`, `30m`) or a date
    /// (`2026-11-01`, UTC midnight) or RFC 3339 time (`2026-11-01T09:00:00+01:00`).
    #[arg(long, default_value = "30d", value_name = "WHEN", value_parser = Since::parse)]
    since: Since,
    /// Print a JSON array (one object per row, no total) instead of a table.
    #[arg(long)]
    json: bool,
    /// Read this SQLite ledger file instead of the config's store.
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    /// Gateway key name (`(none)` in passthrough-auth mode).
    Key,
    Team,
    /// The model the client asked for.
    Model,
    /// UTC date.
    Day,
}

impl By {
    fn group(self) -> GroupBy {
        match self {
            By::Key => GroupBy::Key,
            By::Team => GroupBy::Team,
            By::Model => GroupBy::Model,
            By::Day => GroupBy::Day,
        }
    }

    fn heading(self) -> &'static str {
        match self {
            By::Key => "KEY",
            By::Team => "TEAM",
            By::Model => "MODEL",
            By::Day => "DAY",
        }
    }
}

pub fn run(config: Option<PathBuf>, args: UsageArgs) -> i32 {
    let at = match args.db {
        Some(db) => Location::Sqlite(db),
        None => {
            let path = super::config_path(config);
            // Relative to the current directory, as the gateway opens it.
            let location = crate::config::load::load_file(&path)
                .map_err(|e| e.to_string())
                .and_then(|c| Location::of(&c.store, &c.state));
            match location {
                Ok(at) => at,
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    eprintln!("(or name the ledger file with --db PATH)");
                    return 1;
                }
            }
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modelgate usage: {e}");
            return 1;
        }
    };
    let since_ms = args.since.to_ms(chrono::Utc::now().timestamp_millis());
    let rows = runtime.block_on(async {
        let reader = Reader::open(&at).await?;
        reader.summary(args.by.group(), since_ms).await
    });
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if args.json {
        print_json(&rows);
    } else {
        print_table(args.by, &rows, since_ms, &at.describe());
    }
    0
}

fn print_json(rows: &[SummaryRow]) {
    let array: Vec<serde_json::Value> = rows.iter().map(SummaryRow::to_json).collect();
    out!("{}", serde_json::Value::Array(array));
}

fn print_table(by: By, rows: &[SummaryRow], since_ms: i64, at: &str) {
    let since = chrono::DateTime::from_timestamp_millis(since_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| since_ms.to_string());
    out!("usage since {since} from {at}");
    if rows.is_empty() {
        out!("no requests in this window");
        return;
    }
    let mut total = Totals::default();
    let (mut errors, mut latency_sum) = (0u64, 0.0f64);
    for r in rows {
        total.requests += r.totals.requests;
        total.input_tokens += r.totals.input_tokens;
        total.output_tokens += r.totals.output_tokens;
        total.cache_read_tokens += r.totals.cache_read_tokens;
        total.cache_write_tokens += r.totals.cache_write_tokens;
        total.cost_usd += r.totals.cost_usd;
        errors += r.errors;
        latency_sum += r.avg_latency_ms * r.totals.requests as f64;
    }
    let total_row = SummaryRow {
        group: "TOTAL".into(),
        totals: total,
        errors,
        avg_latency_ms: latency_sum / total.requests.max(1) as f64,
        split: None,
    };

    let header = [
        by.heading(),
        "REQUESTS",
        "INPUT",
        "OUTPUT",
        "CACHE READ",
        "CACHE WRITE",
        "COST USD",
        "ERRORS",
        "AVG LATENCY",
    ]
    .map(String::from);
    let cells = |r: &SummaryRow| {
        [
            r.group.clone(),
            r.totals.requests.to_string(),
            r.totals.input_tokens.to_string(),
            r.totals.output_tokens.to_string(),
            r.totals.cache_read_tokens.to_string(),
            r.totals.cache_write_tokens.to_string(),
            format!("{:.4}", r.totals.cost_usd),
            r.errors.to_string(),
            format!("{:.0} ms", r.avg_latency_ms),
        ]
    };
    let mut lines = vec![header];
    lines.extend(rows.iter().map(cells));
    lines.push(cells(&total_row));
    let mut widths = [0usize; 9];
    for line in &lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for line in &lines {
        // The group column reads left to right; numbers line up on the right.
        let mut text = format!("{:<w$}", line[0], w = widths[0]);
        for (cell, w) in line.iter().zip(widths).skip(1) {
            text.push_str(&format!("  {cell:>w$}"));
        }
        out!("{}", text.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn since_takes_durations_dates_and_rfc3339() {
        assert_eq!(Since::parse("7d"), Ok(Since::Ago(Duration::from_secs(7 * 86_400))));
        assert_eq!(Since::parse("30m"), Ok(Since::Ago(Duration::from_secs(1800))));
        // 2026-11-20T00:00:00Z
        assert_eq!(Since::parse("2026-11-20"), Ok(Since::At(1_795_132_800_000)));
        assert_eq!(
            Since::parse("2026-11-20T01:00:00+01:00"),
            Ok(Since::At(1_795_132_800_000))
        );
        assert!(Since::parse("last tuesday").unwrap_err().contains("neither a duration"));
        assert_eq!(Since::Ago(Duration::from_secs(1)).to_ms(5_000), 4_000);
        assert_eq!(Since::Ago(Duration::MAX).to_ms(5_000), 5_000 - i64::MAX);
    }
}
