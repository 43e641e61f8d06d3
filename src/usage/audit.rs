//! The audit log: one JSON line per request, off the request path.
//!
//! This module owns credential redaction ([`redact`]); the line format and
//! the writer thread follow.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::{Captures, Regex};

/// What a redacted credential reads as.
pub const REDACTED: &str = "[REDACTED]";

// ---------------------------------------------------------------------------
// Redaction
// ---------------------------------------------------------------------------

/// Field names whose value is a credential: anything ending in one of these
/// words (`ANTHROPIC_API_KEY`, `x-api-key`, `db.password`, `clientSecret`,
/// `proxy-authorization`, `access_token`, …). `token` must end the name, so
/// `max_tokens`/`input_tokens` are not caught.
const SECRET_NAME: &str = r"[A-Za-z0-9_.-]*(?i:api[_-]?key|access[_-]?key|private[_-]?key|secret[A-Za-z0-9_-]*|password|passwd|passphrase|authorization|credentials?|cookie|auth|token)";

/// `(?-u:\b)`: an ASCII word boundary. The Unicode `\b` would push the
/// regex engine off its fast DFA as soon as the text has a non-ASCII byte,
/// which prompts usually do.
static PATTERNS: LazyLock<Regex> = LazyLock::new(|| {
    let field = [
        "(?P<fk>",
        SECRET_NAME,
        // optional closing quote (also JSON-escaped, inside a string), then `:`, `=`, `:=` or `=>`
        r#"(?:\\?["'])?[ \t]*(?::=|=>|[:=])[ \t]*)"#,
        "(?P<fv>",
        // a JSON string, a JSON string escaped inside another one, a single-quoted
        // string, or (YAML, env files, header dumps) the rest of the line. Not
        // starting with `=` or `:` keeps `token == x` and `token::X` out.
        r#""(?:[^"\\\r\n]|\\.)*"|\\"(?:[^"\\\r\n]|\\[^"\r\n])*\\"|'[^'\r\n]*'|[^ \t\r\n=:][^\r\n]*"#,
        ")",
    ]
    .concat();
    // Order matters where two can start at the same place (leftmost-first):
    // the specific credential shapes come before the field-name rule, so a
    // key that happens to end in `…_token` is still removed whole.
    let alternatives = [
        // PEM private keys, to the END line or, if cut off, to the end of the text
        r"-----BEGIN[A-Z ]*PRIVATE KEY[A-Z ]*-----(?s:.*?)(?:-----END[A-Z ]*PRIVATE KEY[A-Z ]*-----|\z)",
        // Anthropic (API and OAuth), any length: the prefix is unambiguous
        r"(?-u:\b)sk-ant-[A-Za-z0-9_-]+",
        // OpenAI-style (sk-…, sk-proj-…, sk-svcacct-…)
        r"(?-u:\b)sk-[A-Za-z0-9_-]{20,}",
        // Stripe
        r"(?-u:\b)[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
        // modelgate gateway keys
        r"(?-u:\b)mg-[A-Za-z0-9]{20,}",
        // AWS access key ids
        r"(?-u:\b)(?:AKIA|ASIA)[A-Z0-9]{16}(?-u:\b)",
        // Google API keys
        r"(?-u:\b)AIza[A-Za-z0-9_-]{30,}",
        // GitHub
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})",
        // Slack
        r"(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}",
        // JWTs (the signature may be empty: alg none)
        r"(?-u:\b)eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        // Bearer tokens; at least 8 characters so prose ("the bearer of") survives
        r"(?-u:\b)(?i:bearer)[ \t]+[A-Za-z0-9._~+/-]{8,}=*",
        &field,
    ];
    Regex::new(&alternatives.join("|")).unwrap_or_else(|e| panic!("audit redaction pattern: {e}"))
});

/// Writes `[REDACTED]` for a match; for a `name: value` field, keeps the name
/// and the value's quotes so redacted JSON/YAML stays well-formed.
struct Redactor;

impl regex::Replacer for Redactor {
    fn replace_append(&mut self, caps: &Captures<'_>, dst: &mut String) {
        let (Some(name), Some(value)) = (caps.name("fk"), caps.name("fv")) else {
            dst.push_str(REDACTED);
            return;
        };
        let v = value.as_str();
        let quote = if v.len() >= 4 && v.starts_with("\\\"") && v.ends_with("\\\"") {
            "\\\""
        } else if v.len() >= 2 && (v.starts_with('"') || v.starts_with('\'')) && v.ends_with(&v[..1]) {
            &v[..1]
        } else {
            ""
        };
        dst.push_str(name.as_str());
        dst.push_str(quote);
        dst.push_str(REDACTED);
        dst.push_str(quote);
    }
}

/// Replace credential-like substrings with "[REDACTED]": Anthropic keys (sk-ant-…), OpenAI-style keys (sk-…,
/// sk-proj-…), our gateway keys (mg- followed by ≥20 base62 chars), AWS access key ids (AKIA/ASIA + 16), `Bearer
/// <token>`, Google API keys (AIza…), GitHub tokens (ghp_/gho_/ghs_/github_pat_), private key PEM blocks, JWTs
/// (eyJ….….…), and `"x-api-key": "…"`/`"api_key": "…"`/`"authorization": "…"`/`"password": "…"`-style JSON or YAML
/// fields. Returns Cow::Borrowed when nothing matched (fast path: one RegexSet/regex scan).
///
/// Also Stripe (`sk_live_…`) and Slack (`xox?-…`) tokens, `key=value` env
/// lines and `\"password\": \"…\"` escaped inside a JSON string. It errs on
/// the side of redacting: a `password:` or `token =` line in a prompt loses
/// its value even when that value is code rather than a secret.
///
/// Cost (one combined regex, lazy DFA, no match): a 100 KB clean prompt
/// (code, prose, some non-ASCII) takes about 0.35 ms in a release build
/// (~280 MB/s) and about 0.6 ms in the dev profile; see the ignored test
/// `redact_speed`. It runs on the writer thread only, never on a request.
pub fn redact(text: &str) -> Cow<'_, str> {
    PATTERNS.replace_all(text, Redactor)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn redacts_each_credential_shape() {
        let cases = [
            "sk-ant-api03-AbCdEf0123456789_-AbCdEf0123456789AbCdEf0123456789AA",
            "sk-ant-oat01-abcdefghij",
            "sk-ant-x",
            "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL",
            "sk-proj-Ab3_dEf-ghIJklMNopQRstuVWxyz0123456789",
            "mg-4f7Hk2LmQ9rT1vX8zB3nC6pW",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAY34FZKBOKMUTVV7A",
            "Bearer abcdefgh12345678",
            "bearer eyJhbGciOi.J9.x",
            "AIzaSyD-1234567890abcdefghijklmnopqrstu",
            "ghp_0123456789abcdefghijABCDEFGHIJklmnop",
            "gho_0123456789abcdefghijABCDEFGHIJklmnop",
            "ghs_0123456789abcdefghijABCDEFGHIJklmnop",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "sk_live_0123456789abcdefABCDEF",
            "xoxb-1234567890-abcdefghij",
        ];
        for secret in cases {
            let text = format!("before {secret} after");
            let out = redact(&text);
            assert_eq!(out, "before [REDACTED] after", "{secret:?}");
        }
        // A PEM block cut off by truncation is still removed to the end.
        assert_eq!(redact("x -----BEGIN RSA PRIVATE KEY-----\nMIIEow"), "x [REDACTED]");
        // Inside other punctuation.
        assert_eq!(redact("key=(sk-ant-api03-abc);"), "key=([REDACTED]);");
    }

    #[test]
    fn redacts_credential_fields_keeping_names_and_quotes() {
        let cases = [
            (
                r#"{"x-api-key": "hunter2", "model": "m"}"#,
                r#"{"x-api-key": "[REDACTED]", "model": "m"}"#,
            ),
            (r#"{"api_key":"abc\"def","n":1}"#, r#"{"api_key":"[REDACTED]","n":1}"#),
            (
                r#"{"authorization": "Basic dXNlcjpwYXNz"}"#,
                r#"{"authorization": "[REDACTED]"}"#,
            ),
            (r#"{"password": "p"}"#, r#"{"password": "[REDACTED]"}"#),
            ("password: hunter2", "password: [REDACTED]"),
            ("  db_password: 'hunter2'", "  db_password: '[REDACTED]'"),
            ("ANTHROPIC_API_KEY=whatever-value", "ANTHROPIC_API_KEY=[REDACTED]"),
            (
                "Authorization: Basic dXNlcjpwYXNz\nHost: x",
                "Authorization: [REDACTED]\nHost: x",
            ),
            ("client_secret = abc123", "client_secret = [REDACTED]"),
            (
                r#"{\"password\": \"hunter2\", \"u\": 1}"#,
                r#"{\"password\": \"[REDACTED]\", \"u\": 1}"#,
            ),
            ("GITHUB_TOKEN=abc", "GITHUB_TOKEN=[REDACTED]"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input:?}");
        }
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        let clean = [
            "A task-based approach; ask-me-anything; risk-free",
            "model claude-sonnet-4-5 and claude-opus-4-1-20250805",
            "the bearer of bad news",
            "max_tokens: 1024, input_tokens=5, \"output_tokens\": 7",
            "if token == other { return token::Kind::X; }",
            "img-0123456789abcdefghijklmnop and 100mg-aspirin",
            "sk-learn is a library",
            "Ünïcödé text with emoji 🎉 and CJK 漢字",
            "AKIA is a prefix; AKIA123 too short",
            "",
        ];
        for text in clean {
            assert!(
                matches!(redact(text), Cow::Borrowed(_)),
                "{text:?} -> {:?}",
                redact(text)
            );
        }
    }

    /// `cargo test --release --lib usage::audit::tests::redact_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn redact_speed() {
        let para = "The gateway forwards each request to the provider chosen by the route table. \
                    fn handle(&self, req: Request) -> Result<Response, Error> { let n = req.len(); } \
                    Ünïcödé and emoji 🎉 appear in real prompts too; task-based, claude-sonnet-4-5.\n";
        let mut text = String::new();
        while text.len() < 100_000 {
            text.push_str(para);
        }
        assert!(matches!(redact(&text), Cow::Borrowed(_)));
        let runs = 200;
        let start = Instant::now();
        for _ in 0..runs {
            std::hint::black_box(redact(std::hint::black_box(&text)));
        }
        let each = start.elapsed() / runs;
        println!(
            "redact: {} bytes clean in {each:?} ({:.0} MB/s)",
            text.len(),
            text.len() as f64 / each.as_secs_f64() / 1e6
        );
    }
}
