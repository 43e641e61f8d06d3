//! `modelgate logging status|set-level|configure|formats|levels|metrics|health|files|test|test-redaction`:
//! claude-code-model-gateway's logging commands. Those about a running
//! gateway ask its admin API (`/admin/logging`, `/admin/logging/test`);
//! `formats`, `levels` and `test-redaction` answer locally.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Value};

use super::health::{ask, Target};
use super::Output;
use crate::config::schema::LogFormat;

#[derive(clap::Args, Debug)]
pub struct Shown {
    /// `text` (default) or `json`.
    #[arg(long = "format", value_enum, default_value = "text")]
    output: Output,
}

#[derive(Subcommand, Debug)]
pub enum LoggingCommand {
    /// The running gateway's log level, format and output.
    Status {
        #[command(flatten)]
        shown: Shown,
        #[command(flatten)]
        target: Target,
    },
    /// Change the running gateway's log level (until restart or reload).
    SetLevel {
        /// off, error, warn, info, debug or trace.
        level: String,
        #[command(flatten)]
        target: Target,
    },
    /// Change the running gateway's log format and/or level now (until restart or reload).
    Configure {
        /// standard, detailed, json, colored or minimal.
        #[arg(long, value_enum)]
        format: Option<LogFormat>,
        /// off, error, warn, info, debug or trace.
        #[arg(long)]
        level: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// The log formats `log_format` takes, with an example line each.
    Formats(Shown),
    /// The log levels, least to most verbose.
    Levels(Shown),
    /// Lines the running gateway has written since it started, per level.
    Metrics {
        #[command(flatten)]
        shown: Shown,
        #[command(flatten)]
        target: Target,
    },
    /// Is logging working: the gateway answers, its log and audit files can be written.
    Health {
        #[command(flatten)]
        shown: Shown,
        #[command(flatten)]
        target: Target,
    },
    /// The files the running gateway writes (its log file, the audit log), with sizes.
    Files {
        #[command(flatten)]
        shown: Shown,
        #[command(flatten)]
        target: Target,
    },
    /// Make the running gateway write one line at each enabled level.
    Test(Target),
    /// Show what the redactor (audit log and logged bodies) makes of a line with secrets.
    TestRedaction {
        /// The text to redact; a sample with made-up secrets by default.
        text: Option<String>,
        #[command(flatten)]
        shown: Shown,
    },
}

const LEVELS: [(&str, &str); 6] = [
    ("off", "nothing"),
    ("error", "failures the gateway could not recover from"),
    (
        "warn",
        "config warnings, refused reloads, admin changes, upstream trouble",
    ),
    ("info", "one access line per request, start and stop (the default)"),
    ("debug", "each attempt's details; clients gone mid-answer"),
    ("trace", "the most detail (Pingora's own trace records stay withheld)"),
];

/// A sample with made-up secrets of each kind the redactor knows.
const SAMPLE: &str =
    "anthropic=sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA openai=sk-proj-BBBBBBBBBBBBBBBBBBBBBBBB \
                      stripe=sk_live_DDDDDDDDDDDDDDDDDDDD gateway=mg-cccccccccccccccccccccccccccccc \
                      model=claude-sonnet-4-5 authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZZZZ";

fn print(output: Output, v: &Value, text: impl FnOnce(&Value)) {
    match output {
        Output::Json => out!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Text => text(v),
    }
}

pub fn run(config: Option<PathBuf>, cmd: LoggingCommand) -> i32 {
    match cmd {
        LoggingCommand::Formats(shown) => {
            let v = Value::from(
                LogFormat::ALL
                    .iter()
                    .map(|f| json!({"name": f.name(), "example": example(*f)}))
                    .collect::<Vec<_>>(),
            );
            print(shown.output, &v, |v| {
                for f in v.as_array().into_iter().flatten() {
                    out!(
                        "{:<9} {}",
                        f["name"].as_str().unwrap_or(""),
                        f["example"].as_str().unwrap_or("")
                    );
                }
            });
            0
        }
        LoggingCommand::Levels(shown) => {
            let v = Value::from(
                LEVELS
                    .iter()
                    .map(|(n, d)| json!({"name": n, "shows": d}))
                    .collect::<Vec<_>>(),
            );
            print(shown.output, &v, |v| {
                for l in v.as_array().into_iter().flatten() {
                    out!(
                        "{:<6} {}",
                        l["name"].as_str().unwrap_or(""),
                        l["shows"].as_str().unwrap_or("")
                    );
                }
            });
            0
        }
        LoggingCommand::TestRedaction { text, shown } => {
            let input = text.unwrap_or_else(|| SAMPLE.to_string());
            let redacted = crate::usage::audit::redact(&input).into_owned();
            let v = json!({"input": input, "redacted": redacted, "changed": input != redacted});
            print(shown.output, &v, |v| {
                out!("before: {}", v["input"].as_str().unwrap_or(""));
                out!("after:  {}", v["redacted"].as_str().unwrap_or(""));
            });
            0
        }
        LoggingCommand::Status { shown, target } => ask(config, &target, "GET", "/admin/logging".into(), |v| {
            print(shown.output, v, |v| {
                out!("log level: {}", v["level"].as_str().unwrap_or("?"));
                out!("log format: {}", v["format"].as_str().unwrap_or("?"));
                out!("log output: {}", v["output"].as_str().unwrap_or("?"));
            });
            0
        }),
        LoggingCommand::SetLevel { level, target } => {
            ask(config, &target, "PUT", format!("/admin/logging?level={level}"), |v| {
                out!("log level: {}", v["level"].as_str().unwrap_or("?"));
                0
            })
        }
        LoggingCommand::Configure { format, level, target } => {
            if format.is_none() && level.is_none() {
                eprintln!("modelgate: give --format, --level or both");
                return 1;
            }
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(f) = format {
                query.append_pair("format", f.name());
            }
            if let Some(l) = &level {
                query.append_pair("level", l);
            }
            ask(
                config,
                &target,
                "PUT",
                format!("/admin/logging?{}", query.finish()),
                |v| {
                    out!(
                        "log level: {}, format: {}",
                        v["level"].as_str().unwrap_or("?"),
                        v["format"].as_str().unwrap_or("?")
                    );
                    0
                },
            )
        }
        LoggingCommand::Metrics { shown, target } => ask(config, &target, "GET", "/admin/logging".into(), |v| {
            let lines = &v["lines"];
            print(shown.output, lines, |lines| {
                for (level, _) in &LEVELS[1..] {
                    out!("{level:<6} {}", lines[level].as_u64().unwrap_or(0));
                }
            });
            0
        }),
        LoggingCommand::Files { shown, target } => ask(config, &target, "GET", "/admin/logging".into(), |v| {
            let files = &v["files"];
            print(shown.output, files, |files| {
                let list = files.as_array().cloned().unwrap_or_default();
                if list.is_empty() {
                    out!("no files: the log goes to stderr and there is no audit log");
                }
                for f in list {
                    out!(
                        "{:<6} {} ({} bytes)",
                        f["kind"].as_str().unwrap_or("?"),
                        f["path"].as_str().unwrap_or("?"),
                        f["bytes"].as_u64().map_or("?".to_string(), |b| b.to_string())
                    );
                }
            });
            0
        }),
        LoggingCommand::Health { shown, target } => ask(config, &target, "GET", "/admin/logging".into(), |v| {
            let mut checks = vec![json!({"check": "gateway answers /admin/logging", "ok": true})];
            for f in v["files"].as_array().into_iter().flatten() {
                checks.push(json!({
                    "check": format!("{} file {} is writable", f["kind"].as_str().unwrap_or("?"), f["path"].as_str().unwrap_or("?")),
                    "ok": f["writable"] == true,
                }));
            }
            let ok = checks.iter().all(|c| c["ok"] == true);
            let report = json!({"ok": ok, "checks": checks});
            print(shown.output, &report, |r| {
                for c in r["checks"].as_array().into_iter().flatten() {
                    out!(
                        "{:<5} {}",
                        if c["ok"] == true { "ok" } else { "FAIL" },
                        c["check"].as_str().unwrap_or("")
                    );
                }
            });
            i32::from(!ok)
        }),
        LoggingCommand::Test(target) => ask(config, &target, "POST", "/admin/logging/test".into(), |v| {
            let written: Vec<&str> = v["written"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            out!(
                "wrote a test line at {} (log level {}, format {})",
                written.join(", "),
                v["level"].as_str().unwrap_or("?"),
                v["format"].as_str().unwrap_or("?")
            );
            0
        }),
    }
}

/// What a line looks like in each format.
fn example(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Standard => "[2026-12-05T10:00:00Z INFO  access] POST /v1/messages 200 …",
        LogFormat::Detailed => {
            "1796464800123 INFO  [modelgate-worker] access (src/gateway/access.rs:60) POST /v1/messages 200 …"
        }
        LogFormat::Json => r#"{"ts":"1796464800123","level":"INFO","target":"access","msg":"POST /v1/messages 200 …"}"#,
        LogFormat::Colored => "[2026-12-05T10:00:00Z INFO  access] … (the level in colour)",
        LogFormat::Minimal => "INFO  POST /v1/messages 200 …",
    }
}
