//! Checks of single values every part that compiles a config shares
//! (gateway keys, routes, sign-in group policies): globs, model
//! allowlists and budgets, with errors that name the key.

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::schema::BudgetConfig;
use super::ConfigError;

/// One glob, `key` naming it in an error.
pub fn glob(key: &str, pattern: &str) -> Result<Glob, ConfigError> {
    Glob::new(pattern).map_err(|e| ConfigError::invalid(key, format!("bad glob `{pattern}`: {e}")))
}

/// A `models:` allowlist of globs under `key`; `None` (every model) when empty.
pub fn model_allowlist(key: &str, patterns: &[String]) -> Result<Option<GlobSet>, ConfigError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for (j, m) in patterns.iter().enumerate() {
        b.add(glob(&format!("{key}.models[{j}]"), m)?);
    }
    b.build()
        .map(Some)
        .map_err(|e| ConfigError::invalid(format!("{key}.models"), e.to_string()))
}

/// A budget under `key`: a non-negative, finite amount.
pub fn budget(key: &str, b: &BudgetConfig) -> Result<(), ConfigError> {
    if !b.usd.is_finite() || b.usd < 0.0 {
        return Err(ConfigError::invalid(
            format!("{key}.usd"),
            "must be a non-negative amount of USD",
        ));
    }
    Ok(())
}
