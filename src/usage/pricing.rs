//! The price table: USD per million tokens for each model, and what a
//! request's [`Usage`] costs under it.
//!
//! This module owns the table's file format (`conf/prices.yaml`, compiled in
//! as the built-in table), its validation, the model-id → price lookup the
//! request path calls, and the cost arithmetic (cache reads and writes, fast
//! mode, long-context tiers). A table is immutable once built and does no
//! I/O except in [`PriceTable::load`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;

use crate::dialects::Usage;

const BUILTIN_YAML: &str = include_str!("../../conf/prices.yaml");
const BUILTIN_ORIGIN: &str = "built-in";

/// Prices in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Uncached input tokens.
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    /// 5-minute cache writes.
    pub cache_write: f64,
}

/// One model's price.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub base: Rates,
    /// Applied to every rate when the request ran in fast mode; 1 when the
    /// model has no fast mode.
    pub fast_multiplier: f64,
    /// `(above, rates)`: when the prompt (input + cache read + cache write)
    /// exceeds `above` tokens, the whole request is billed at `rates`.
    pub long_context: Option<(u64, Rates)>,
}

impl Price {
    /// USD for `usage`; `fast` applies fast_multiplier; long_context rates
    /// apply when prompt tokens (input + cache read + cache write) exceed the
    /// threshold.
    pub fn cost_usd(&self, usage: &Usage, fast: bool) -> f64 {
        let prompt = usage
            .input_tokens
            .saturating_add(usage.cache_read_input_tokens)
            .saturating_add(usage.cache_creation_input_tokens);
        // Vendors bill the whole request at the premium rate once the prompt
        // crosses the line, not just the tokens past it.
        let r = match &self.long_context {
            Some((above, rates)) if prompt > *above => rates,
            _ => &self.base,
        };
        let per_mtok = usage.input_tokens as f64 * r.input
            + usage.output_tokens as f64 * r.output
            + usage.cache_read_input_tokens as f64 * r.cache_read
            + usage.cache_creation_input_tokens as f64 * r.cache_write;
        let multiplier = if fast { self.fast_multiplier } else { 1.0 };
        per_mtok * multiplier / 1_000_000.0
    }
}

/// Why a price table could not be loaded. Messages name the file and the
/// offending key (`models[3].output`).
#[derive(Debug, thiserror::Error)]
pub enum PricingError {
    #[error("cannot read price table {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax errors and wrong types or fields; serde_yaml's message carries
    /// the key path and line.
    #[error("{origin}: {source}")]
    Yaml {
        origin: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{origin}: {key}: {message}")]
    Invalid {
        origin: String,
        key: String,
        message: String,
    },
}

/// A validated price table: an ordered list of (glob, price) where the first
/// match wins, and an optional default.
#[derive(Debug)]
pub struct PriceTable {
    /// This table among those the process has built ([`Memo`]'s key).
    id: u64,
    origin: String,
    prices: Vec<Price>,
    globs: GlobSet,
    default: Option<Price>,
}

impl PriceTable {
    /// The table compiled into the binary from `conf/prices.yaml`, parsed
    /// once per process.
    pub fn builtin() -> Arc<PriceTable> {
        static BUILTIN: OnceLock<Arc<PriceTable>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| match PriceTable::parse(BUILTIN_YAML, BUILTIN_ORIGIN) {
                Ok(t) => Arc::new(t),
                // Unreachable in a tested build (a unit test parses it); if
                // it happens anyway, run unpriced rather than refuse to start.
                Err(e) => {
                    log::error!("the built-in price table is invalid, every model is unpriced: {e}");
                    Arc::new(PriceTable::empty(BUILTIN_ORIGIN))
                }
            })
            .clone()
    }

    /// Parse and validate a table. `origin` names it in error messages and
    /// in [`PriceTable::origin`].
    pub fn parse(yaml: &str, origin: &str) -> Result<PriceTable, PricingError> {
        let doc: TableDoc = serde_yaml::from_str(yaml).map_err(|source| PricingError::Yaml {
            origin: origin.to_string(),
            source,
        })?;
        let invalid = |key: String, message: String| PricingError::Invalid {
            origin: origin.to_string(),
            key,
            message,
        };
        if doc.models.is_empty() {
            return Err(invalid("models".into(), "at least one entry is required".into()));
        }

        let mut prices = Vec::with_capacity(doc.models.len());
        let mut builder = GlobSetBuilder::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, entry) in doc.models.iter().enumerate() {
            let key = format!("models[{i}]");
            let pattern = match entry.pattern.as_deref() {
                None => return Err(invalid(format!("{key}.match"), "is required".into())),
                Some("") => return Err(invalid(format!("{key}.match"), "must not be empty".into())),
                Some(p) => p,
            };
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(true)
                .empty_alternates(true)
                .build()
                .map_err(|e| invalid(format!("{key}.match"), format!("bad glob `{pattern}`: {e}")))?;
            // An identical later glob can never win; it is almost certainly
            // an edit that meant to change the earlier entry.
            if let Some(first) = seen.insert(pattern.to_ascii_lowercase(), i) {
                return Err(invalid(
                    format!("{key}.match"),
                    format!("`{pattern}` repeats models[{first}].match, which always matches first"),
                ));
            }
            builder.add(glob);
            prices.push(entry.to_price(&key).map_err(|(k, m)| invalid(k, m))?);
        }
        let globs = builder
            .build()
            .map_err(|e| invalid("models".into(), format!("cannot compile the globs: {e}")))?;

        let default = match &doc.default {
            None => None,
            Some(d) if d.pattern.is_some() => {
                return Err(invalid(
                    "default.match".into(),
                    "the default applies to every unmatched model and takes no `match`".into(),
                ))
            }
            Some(d) => Some(d.to_price("default").map_err(|(k, m)| invalid(k, m))?),
        };

        Ok(PriceTable {
            id: next_table_id(),
            origin: origin.to_string(),
            prices,
            globs,
            default,
        })
    }

    /// Read and parse the table at `path`.
    pub fn load(path: &Path) -> Result<PriceTable, PricingError> {
        let shown = path.display().to_string();
        let yaml = std::fs::read_to_string(path).map_err(|source| PricingError::Io {
            path: shown.clone(),
            source,
        })?;
        PriceTable::parse(&yaml, &shown)
    }

    /// The price of `model`: the first entry whose glob matches, else the
    /// default, else `None` (unpriced).
    ///
    /// One GlobSet match over all entries costs 0.1–0.3 µs for real model ids
    /// on one thread (the `lookup_speed` test, release build, prints it beside
    /// a remembered lookup), linear in the id's length. Under load it cost
    /// more: the glob set's regex takes a search cache from a pool that only
    /// its first thread reaches without a lock, and allocates the list of
    /// matches. In `benches/e2e/profile.sh
    /// cpu` it was about 1% of the gateway's samples for a single lookup per
    /// request (a keyed request makes three: admission, settlement, record).
    /// So each thread remembers what the ids it saw last matched ([`Memo`]):
    /// no lock, a bounded size, forgotten when the table changes.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        match self.first_match(model) {
            Some(i) => self.prices.get(i),
            None => self.default.as_ref(),
        }
    }

    /// Number of `models` entries (the default not counted).
    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// The file the table came from, or `built-in`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn empty(origin: &str) -> PriceTable {
        PriceTable {
            id: next_table_id(),
            origin: origin.to_string(),
            prices: Vec::new(),
            globs: GlobSet::empty(),
            default: None,
        }
    }

    fn first_match(&self, model: &str) -> Option<usize> {
        MEMO.try_with(|memo| memo.borrow_mut().first_match(self, model))
            .unwrap_or_else(|_| self.match_globs(model))
    }

    fn match_globs(&self, model: &str) -> Option<usize> {
        // `matches` returns indices in ascending order: the first is the
        // earliest entry, which is the one that wins.
        self.globs.matches(model).first().copied()
    }
}

fn next_table_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Ids a thread remembers at most: a gateway sees a handful of models;
/// clients that send endless distinct names only make the memo start over.
const MEMO_ENTRIES: usize = 64;
/// Longer ids are matched every time and not remembered.
const MEMO_ID_BYTES: usize = 128;

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo { table: 0, seen: HashMap::new() });
}

/// One thread's model id → matching entry, for the table [`Memo::table`].
struct Memo {
    table: u64,
    seen: HashMap<Box<str>, Option<usize>>,
}

impl Memo {
    fn first_match(&mut self, table: &PriceTable, model: &str) -> Option<usize> {
        if self.table != table.id {
            self.table = table.id;
            self.seen.clear();
        }
        if let Some(&hit) = self.seen.get(model) {
            return hit;
        }
        let found = table.match_globs(model);
        if model.len() <= MEMO_ID_BYTES {
            if self.seen.len() >= MEMO_ENTRIES {
                self.seen.clear();
            }
            self.seen.insert(model.into(), found);
        }
        found
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableDoc {
    models: Vec<PriceDoc>,
    #[serde(default)]
    default: Option<PriceDoc>,
}

/// One `models` entry, or the `default` (which has no `match`). A single
/// struct, because serde's `flatten` cannot be combined with
/// `deny_unknown_fields`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceDoc {
    #[serde(rename = "match")]
    pattern: Option<String>,
    input: f64,
    output: f64,
    cache_read: f64,
    cache_write: f64,
    fast_multiplier: Option<f64>,
    long_context: Option<LongContextDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LongContextDoc {
    above: u64,
    input: f64,
    output: f64,
    cache_read: f64,
    cache_write: f64,
}

/// A validation failure: (key, message).
type FieldError = (String, String);

fn rate(key: &str, field: &str, value: f64) -> Result<f64, FieldError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err((
            format!("{key}.{field}"),
            format!("must be a finite price ≥ 0, got {value}"),
        ))
    }
}

fn rates(key: &str, input: f64, output: f64, cache_read: f64, cache_write: f64) -> Result<Rates, FieldError> {
    Ok(Rates {
        input: rate(key, "input", input)?,
        output: rate(key, "output", output)?,
        cache_read: rate(key, "cache_read", cache_read)?,
        cache_write: rate(key, "cache_write", cache_write)?,
    })
}

impl PriceDoc {
    fn to_price(&self, key: &str) -> Result<Price, FieldError> {
        let base = rates(key, self.input, self.output, self.cache_read, self.cache_write)?;
        let fast_multiplier = match self.fast_multiplier {
            None => 1.0,
            Some(m) if m.is_finite() && m >= 1.0 => m,
            Some(m) => {
                return Err((
                    format!("{key}.fast_multiplier"),
                    format!("must be a finite number ≥ 1, got {m}"),
                ))
            }
        };
        let long_context = match &self.long_context {
            None => None,
            Some(lc) => {
                let lc_key = format!("{key}.long_context");
                if lc.above == 0 {
                    return Err((format!("{lc_key}.above"), "must be > 0 tokens".into()));
                }
                let r = rates(&lc_key, lc.input, lc.output, lc.cache_read, lc.cache_write)?;
                Some((lc.above, r))
            }
        };
        Ok(Price {
            base,
            fast_multiplier,
            long_context,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_input_tokens: cache_read,
            cache_creation_input_tokens: cache_write,
        }
    }

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    fn base_of(t: &PriceTable, model: &str) -> Rates {
        t.lookup(model).unwrap_or_else(|| panic!("{model} is unpriced")).base
    }

    fn err(yaml: &str) -> String {
        PriceTable::parse(yaml, "test.yaml").unwrap_err().to_string()
    }

    const ONE: &str =
        "models:\n  - match: \"m*\"\n    input: 1\n    output: 2\n    cache_read: 0.1\n    cache_write: 1.25\n";

    #[test]
    fn builtin_parses() {
        let t = PriceTable::parse(BUILTIN_YAML, BUILTIN_ORIGIN).unwrap();
        assert!(t.len() >= 30, "{}", t.len());
        let b = PriceTable::builtin();
        assert_eq!(b.origin(), "built-in");
        assert_eq!(b.len(), t.len());
        assert!(Arc::ptr_eq(&b, &PriceTable::builtin()));
    }

    #[test]
    fn anthropic_ids_on_every_platform() {
        let t = PriceTable::builtin();
        let sonnet45 = Rates {
            input: 3.0,
            output: 15.0,
            cache_read: 0.3,
            cache_write: 3.75,
        };
        for id in [
            "claude-sonnet-4-5",
            "claude-sonnet-4-5-20250929",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "anthropic.claude-sonnet-4-5",
            "claude-sonnet-4-5@20250929",
            "Claude-Sonnet-4-5",
        ] {
            let p = t.lookup(id).unwrap_or_else(|| panic!("{id}"));
            assert_eq!(p.base, sonnet45, "{id}");
            assert!(p.long_context.is_some(), "{id}");
        }
        for id in [
            "claude-opus-4-6",
            "anthropic.claude-opus-4-6-v1:0",
            "claude-opus-4-5-20251101",
        ] {
            assert_eq!(base_of(&t, id).input, 5.0, "{id}");
        }
        assert_eq!(t.lookup("claude-opus-4-6").unwrap().fast_multiplier, 6.0);
        assert_eq!(t.lookup("claude-opus-4-5").unwrap().fast_multiplier, 1.0);
        assert_eq!(base_of(&t, "claude-haiku-4-5@20251001").input, 1.0);
        assert_eq!(base_of(&t, "us.anthropic.claude-3-5-haiku-20241022-v1:0").input, 0.8);
        assert_eq!(base_of(&t, "claude-3-haiku-20240307").cache_read, 0.03);
        assert_eq!(base_of(&t, "claude-3-7-sonnet-20250219").output, 15.0);
    }

    #[test]
    fn point_releases_do_not_fall_into_older_entries() {
        let t = PriceTable::builtin();
        // Opus 4.1 is three times Opus 4.5; each must find its own entry.
        for id in [
            "claude-opus-4-1",
            "claude-opus-4-1-20250805",
            "anthropic.claude-opus-4-1-20250805-v1:0",
            "claude-opus-4-1@20250805",
        ] {
            assert_eq!(base_of(&t, id).input, 15.0, "{id}");
        }
        for id in [
            "claude-opus-4-20250514",
            "claude-opus-4-0",
            "claude-opus-4",
            "us.anthropic.claude-opus-4-20250514-v1:0",
            "claude-opus-4@20250514",
        ] {
            assert_eq!(base_of(&t, id).output, 75.0, "{id}");
        }
        // Sonnet 4.5 and Sonnet 4 cost the same today; they must still be
        // told apart, and Sonnet 4.6 has no long-context premium.
        let s4 = t.lookup("claude-sonnet-4-20250514").unwrap();
        let s45 = t.lookup("claude-sonnet-4-5-20250929").unwrap();
        let s46 = t.lookup("claude-sonnet-4-6").unwrap();
        assert!(!std::ptr::eq(s4, s45));
        assert!(s46.long_context.is_none());
        assert!(std::ptr::eq(s4, t.lookup("claude-sonnet-4@20250514").unwrap()));
        assert!(std::ptr::eq(
            s4,
            t.lookup("anthropic.claude-sonnet-4-20250514-v1:0").unwrap()
        ));
        // A model the table does not know is unpriced, not priced as its
        // nearest older relative.
        assert!(t.lookup("claude-opus-4-9").is_none());
        assert!(t.lookup("claude-sonnet-4-9").is_none());
    }

    #[test]
    fn openai_gemini_nova_siblings() {
        let t = PriceTable::builtin();
        assert_eq!(base_of(&t, "gpt-4o-mini").input, 0.15);
        assert_eq!(base_of(&t, "gpt-4o-mini-2024-07-18").input, 0.15);
        assert_eq!(base_of(&t, "gpt-4o").input, 2.5);
        assert_eq!(base_of(&t, "gpt-4o-2024-11-20").input, 2.5);
        assert!(t.lookup("gpt-4o-2024-05-13").is_none());
        assert_eq!(base_of(&t, "gpt-5-mini").input, 0.25);
        assert_eq!(base_of(&t, "gpt-5-nano-2025-08-07").input, 0.05);
        assert_eq!(base_of(&t, "gpt-5").input, 1.25);
        assert_eq!(base_of(&t, "openai/gpt-5-2025-08-07").cache_read, 0.125);
        assert_eq!(base_of(&t, "gpt-4.1-mini").input, 0.4);
        assert_eq!(base_of(&t, "gpt-4.1-nano-2025-04-14").input, 0.1);
        assert_eq!(base_of(&t, "gpt-4.1").input, 2.0);
        assert_eq!(base_of(&t, "o3-mini").cache_read, 0.55);
        assert_eq!(base_of(&t, "o3-mini-2025-01-31").cache_read, 0.55);
        assert_eq!(base_of(&t, "o4-mini").cache_read, 0.275);
        assert_eq!(base_of(&t, "o3").input, 2.0);
        assert_eq!(base_of(&t, "openai/o3-2025-04-16").input, 2.0);
        assert!(t.lookup("o3-pro").is_none());
        assert!(t.lookup("foo3").is_none());
        assert_eq!(base_of(&t, "gemini-2.5-flash-lite").input, 0.1);
        assert_eq!(base_of(&t, "gemini-2.5-flash").input, 0.3);
        assert_eq!(base_of(&t, "google/gemini-2.5-flash").input, 0.3);
        assert!(t.lookup("gemini-2.5-pro").unwrap().long_context.is_some());
        assert_eq!(base_of(&t, "gemini-2.0-flash-001").input, 0.1);
        assert!(t.lookup("gemini-2.0-flash-lite").is_none());
        assert_eq!(base_of(&t, "amazon.nova-pro-v1:0").input, 0.8);
        assert_eq!(base_of(&t, "us.amazon.nova-lite-v1:0").input, 0.06);
        assert_eq!(base_of(&t, "amazon.nova-micro-v1:0").cache_read, 0.00875);
    }

    #[test]
    fn cost_arithmetic() {
        let t = PriceTable::builtin();
        let opus = t.lookup("claude-opus-4-6").unwrap();
        // 1M of each kind: 5 + 25 + 0.5 + 6.25.
        let u = usage(1_000_000, 1_000_000, 1_000_000, 1_000_000);
        assert!(approx(opus.cost_usd(&u, false), 36.75));
        assert!(approx(opus.cost_usd(&u, true), 36.75 * 6.0));
        // A typical Claude Code turn: mostly cache reads.
        let u = usage(2_000, 500, 80_000, 3_000);
        let want = (2_000.0 * 5.0 + 500.0 * 25.0 + 80_000.0 * 0.5 + 3_000.0 * 6.25) / 1e6;
        assert!(approx(opus.cost_usd(&u, false), want));
        // Fast mode is a no-op where the model has none.
        let haiku = t.lookup("claude-haiku-4-5").unwrap();
        assert!(approx(haiku.cost_usd(&u, true), haiku.cost_usd(&u, false)));
        assert_eq!(opus.cost_usd(&Usage::default(), true), 0.0);
    }

    #[test]
    fn long_context_switches_above_the_threshold() {
        let t = PriceTable::builtin();
        let sonnet = t.lookup("claude-sonnet-4-5").unwrap();
        // Exactly 200k prompt tokens (spread over input and cache) is still
        // the base rate.
        let at = usage(100_000, 1_000, 60_000, 40_000);
        let base = (100_000.0 * 3.0 + 1_000.0 * 15.0 + 60_000.0 * 0.3 + 40_000.0 * 3.75) / 1e6;
        assert!(approx(sonnet.cost_usd(&at, false), base));
        // One more cached token puts the whole request on the premium rate.
        let over = usage(100_000, 1_000, 60_001, 40_000);
        let premium = (100_000.0 * 6.0 + 1_000.0 * 22.5 + 60_001.0 * 0.6 + 40_000.0 * 7.5) / 1e6;
        assert!(approx(sonnet.cost_usd(&over, false), premium));
        // Output tokens do not count toward the threshold.
        let out_heavy = usage(150_000, 100_000, 0, 0);
        assert!(approx(
            sonnet.cost_usd(&out_heavy, false),
            (150_000.0 * 3.0 + 100_000.0 * 15.0) / 1e6
        ));
        // Fast mode multiplies the tier that applies.
        let p = Price {
            base: Rates {
                input: 1.0,
                output: 1.0,
                cache_read: 1.0,
                cache_write: 1.0,
            },
            fast_multiplier: 6.0,
            long_context: Some((
                10,
                Rates {
                    input: 2.0,
                    output: 2.0,
                    cache_read: 2.0,
                    cache_write: 2.0,
                },
            )),
        };
        assert!(approx(p.cost_usd(&usage(11, 0, 0, 0), true), 11.0 * 2.0 * 6.0 / 1e6));
        // Token counts near u64::MAX must not overflow the threshold sum.
        let huge = usage(u64::MAX, 0, u64::MAX, 0);
        assert!(p.cost_usd(&huge, false).is_finite());
    }

    #[test]
    fn unknown_models_use_the_default_or_nothing() {
        let t = PriceTable::parse(ONE, "t").unwrap();
        assert!(t.lookup("other").is_none());
        assert_eq!(t.lookup("model").unwrap().base.input, 1.0);

        let with_default = format!(
            "{ONE}default:\n  input: 9\n  output: 9\n  cache_read: 9\n  cache_write: 9\n  fast_multiplier: 2\n"
        );
        let t = PriceTable::parse(&with_default, "t").unwrap();
        let d = t.lookup("other").unwrap();
        assert_eq!(d.base.output, 9.0);
        assert_eq!(d.fast_multiplier, 2.0);
        assert_eq!(t.lookup("model").unwrap().base.input, 1.0);
        assert_eq!(t.len(), 1);
        assert!(!t.is_empty());

        let t = PriceTable::parse(&format!("{ONE}default: null\n"), "t").unwrap();
        assert!(t.lookup("other").is_none());
    }

    #[test]
    fn first_match_wins() {
        let yaml = "models:
  - match: \"a-b*\"
    input: 2
    output: 2
    cache_read: 2
    cache_write: 2
  - match: \"a*\"
    input: 1
    output: 1
    cache_read: 1
    cache_write: 1
";
        let t = PriceTable::parse(yaml, "t").unwrap();
        assert_eq!(base_of(&t, "a-b-c").input, 2.0);
        assert_eq!(base_of(&t, "a-c").input, 1.0);
    }

    #[test]
    fn the_memo_answers_for_the_table_asked_and_stays_bounded() {
        let first = PriceTable::parse(ONE, "first").unwrap();
        // `model-a` matches entry 0 of `first` and entry 1 of `other`: a
        // memo that answered for the wrong table would give `other` the
        // price of its entry 0.
        let x_first =
            "models:\n  - match: \"x*\"\n    input: 9\n    output: 2\n    cache_read: 0.1\n    cache_write: 1.25\n";
        let other = PriceTable::parse(
            &format!("{x_first}{}", &ONE["models:\n".len()..]).replace("input: 1\n", "input: 7\n"),
            "other",
        )
        .unwrap();
        // Alternate tables on one thread: each answer is its own table's.
        for _ in 0..3 {
            assert_eq!(base_of(&first, "model-a").input, 1.0);
            assert_eq!(base_of(&other, "model-a").input, 7.0);
            assert_eq!(base_of(&other, "x-model").input, 9.0);
            assert!(first.lookup("x-model").is_none());
        }
        assert!(first.lookup("unpriced-model").is_none());
        assert!(first.lookup("unpriced-model").is_none());
        // Endless distinct ids: the memo starts over instead of growing.
        for i in 0..(MEMO_ENTRIES * 3) {
            assert!(first.lookup(&format!("unpriced-{i}")).is_none());
        }
        assert!(MEMO.with(|m| m.borrow().seen.len()) <= MEMO_ENTRIES);
        let long = format!("model-{}", "a".repeat(MEMO_ID_BYTES));
        assert!(first.lookup(&long).is_some());
        assert!(MEMO.with(|m| !m.borrow().seen.contains_key(long.as_str())));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.yaml");
        std::fs::write(&path, ONE.replace("output: 2", "output: -2")).unwrap();
        let e = PriceTable::load(&path).unwrap_err().to_string();
        assert!(e.contains("prices.yaml") && e.contains("models[0].output"), "{e}");

        std::fs::write(&path, ONE).unwrap();
        let t = PriceTable::load(&path).unwrap();
        assert_eq!(t.origin(), path.display().to_string());

        let e = PriceTable::load(&dir.path().join("missing.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read price table") && e.contains("missing.yaml"),
            "{e}"
        );
    }

    #[test]
    fn invalid_entries_name_the_key() {
        // A second, valid entry, so errors must point at the right index.
        let second = "  - match: \"n*\"\n    input: 1\n    output: 2\n    cache_read: 0.1\n    cache_write: 1.25\n";
        let long_context = concat!(
            "    long_context:\n      above: 10\n",
            "      input: 1\n      output: 1\n      cache_read: 1\n      cache_write: 1\n"
        );
        let default = "default:\n  input: 1\n  output: 1\n  cache_read: 1\n  cache_write: 1\n";
        let cases: Vec<(String, &str)> = vec![
            (
                format!("{ONE}{}", second.replace("output: 2", "output: -1")),
                "models[1].output",
            ),
            (
                format!("{}{second}", ONE.replace("cache_read: 0.1", "cache_read: .nan")),
                "models[0].cache_read",
            ),
            (ONE.replace("input: 1", "input: .inf"), "models[0].input"),
            (format!("{ONE}    fast_multiplier: 0.5\n"), "models[0].fast_multiplier"),
            (
                format!("{ONE}{}", long_context.replace("above: 10", "above: 0")),
                "models[0].long_context.above",
            ),
            (
                format!("{ONE}{}", long_context.replace("output: 1", "output: -1")),
                "models[0].long_context.output",
            ),
            (ONE.replace("\"m*\"", "\"m{*\""), "models[0].match"),
            (ONE.replace("\"m*\"", "\"\""), "models[0].match"),
            (
                format!("{ONE}{}", second.replace("\"n*\"", "\"M*\"")),
                "models[1].match",
            ),
            (ONE.replace("match: \"m*\"\n    ", ""), "models[0].match"),
            ("models: []\n".to_string(), "models: at least one"),
            (
                format!("{ONE}{}", default.replace("default:\n", "default:\n  match: x\n")),
                "default.match",
            ),
            (
                format!("{ONE}{}", default.replace("output: 1", "output: -1")),
                "default.output",
            ),
        ];
        for (yaml, key) in cases {
            let e = err(&yaml);
            assert!(e.starts_with("test.yaml: "), "{e}");
            assert!(e.contains(key), "want `{key}` in: {e}\n---\n{yaml}");
        }
    }

    #[test]
    fn schema_errors_name_the_key() {
        // Unknown fields, wrong types and missing prices come from serde,
        // whose messages carry the path.
        let e = err(&ONE.replace("cache_write", "cache_writes"));
        assert!(e.contains("models[0]") && e.contains("cache_writes"), "{e}");
        let e = err(&ONE.replace("output: 2", "output: two"));
        assert!(e.contains("models[0].output"), "{e}");
        let e = err(&ONE.replace("    output: 2\n", ""));
        assert!(e.contains("models[0]") && e.contains("output"), "{e}");
        let e = err(&format!("{ONE}extra: 1\n"));
        assert!(e.contains("extra"), "{e}");
        let e = err("");
        assert!(e.starts_with("test.yaml: "), "{e}");
    }

    #[test]
    #[ignore = "timing; run with --release --ignored --nocapture"]
    fn lookup_speed() {
        let t = PriceTable::builtin();
        let long = format!("claude-{}", "x".repeat(1000));
        for id in [
            "claude-sonnet-4-5-20250929",
            "us.anthropic.claude-opus-4-6-v1:0",
            "gpt-4o-mini",
            "gemini-2.5-pro",
            "unknown-model",
            long.as_str(),
        ] {
            let n = 100_000u32;
            let start = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(t.match_globs(std::hint::black_box(id)));
            }
            let globs = start.elapsed() / n;
            let start = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(t.lookup(std::hint::black_box(id)));
            }
            println!("{:>40.40}: glob set {:?}, lookup {:?}", id, globs, start.elapsed() / n);
        }
    }
}
