//! A signed-in developer's spend caps, as the Claude Code gateway protocol
//! reports them: the `anthropic-ratelimit-unified-*` headers on each
//! successful `/v1/messages` answer (Claude Code shows "You've used NN% of
//! your usage credits" past 75 % and 95 %), the same headers on the `429
//! billing_error` that refuses a request once a cap is reached, and the
//! body of `GET /api/oauth/usage` (the dollars beside the percent).
//!
//! A cap is a budget of the developer's own scope (their group policy's
//! `budget`) or of their team (a pool the whole group shares). Pure
//! functions over standings the policy backend reported.

use serde_json::{json, Value};

use crate::config::schema::BudgetPeriod;

/// One budget and what has been spent against it this period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cap {
    pub spent_nanos: i64,
    pub budget_nanos: u64,
    pub period: BudgetPeriod,
    /// Unix ms of the reset; `None` for a `total` budget.
    pub reset_ms: Option<i64>,
    /// The team's budget, shared by the whole group.
    pub group_pool: bool,
}

impl Cap {
    /// Spent over budget (0 for a zero budget that nothing used).
    pub fn utilization(&self) -> f64 {
        if self.budget_nanos == 0 {
            return if self.spent_nanos > 0 { 1.0 } else { 0.0 };
        }
        self.spent_nanos.max(0) as f64 / self.budget_nanos as f64
    }

    fn period_name(&self) -> Option<&'static str> {
        match self.period {
            BudgetPeriod::Daily => Some("daily"),
            BudgetPeriod::Weekly => Some("weekly"),
            BudgetPeriod::Monthly => Some("monthly"),
            BudgetPeriod::Total => None,
        }
    }

    fn reset_s(&self) -> Option<i64> {
        self.reset_ms.map(|ms| ms.div_euclid(1000))
    }
}

const STATUS: &str = "anthropic-ratelimit-unified-status";
const RESET: &str = "anthropic-ratelimit-unified-reset";
const OVERAGE_RESET: &str = "anthropic-ratelimit-unified-overage-reset";
const UTILIZATION: &str = "anthropic-ratelimit-unified-overage-utilization";
const SURPASSED: &str = "anthropic-ratelimit-unified-overage-surpassed-threshold";

/// The cap the headers describe while requests are allowed: the fullest.
pub fn fullest(caps: &[Cap]) -> Option<&Cap> {
    caps.iter().max_by(|a, b| a.utilization().total_cmp(&b.utilization()))
}

/// The headers of a successful answer: the fullest cap's standing. None
/// for a developer without caps.
pub fn standing_headers(caps: &[Cap]) -> Vec<(&'static str, String)> {
    let Some(cap) = fullest(caps) else {
        return Vec::new();
    };
    let used = cap.utilization();
    let status = if used >= 0.75 { "allowed_warning" } else { "allowed" };
    // Kept below 1 while requests are still allowed.
    let shown = (used.min(0.99) * 100.0).floor() / 100.0;
    let mut out = vec![
        (STATUS, status.to_string()),
        (
            "anthropic-ratelimit-unified-representative-claim",
            "overage".to_string(),
        ),
        ("anthropic-ratelimit-unified-overage-status", status.to_string()),
        (UTILIZATION, format!("{shown:.2}")),
    ];
    if used >= 0.95 {
        out.push((SURPASSED, "0.95".into()));
    } else if used >= 0.75 {
        out.push((SURPASSED, "0.75".into()));
    }
    if let Some(reset) = cap.reset_s() {
        out.push((RESET, reset.to_string()));
        out.push((OVERAGE_RESET, reset.to_string()));
    }
    out
}

/// The cap a refusal describes: of those spent, the one that resets last
/// (a total budget never does); the fullest when none is quite spent (the
/// request's reservation was what did not fit).
pub fn blocking(caps: &[Cap]) -> Option<&Cap> {
    caps.iter()
        .filter(|c| c.utilization() >= 1.0)
        .max_by_key(|c| c.reset_ms.unwrap_or(i64::MAX))
        .or_else(|| fullest(caps))
}

/// The headers of the `429 billing_error` refusing a request at a cap
/// (without `representative-claim` and `overage-status`: with them Claude
/// Code would replace the gateway's message with its own).
pub fn rejected_headers(cap: &Cap) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (STATUS, "rejected".to_string()),
        (UTILIZATION, "1".to_string()),
        (SURPASSED, "1".to_string()),
        (
            "anthropic-ratelimit-unified-overage-disabled-reason",
            "org_spend_cap_reached".to_string(),
        ),
    ];
    if let Some(reset) = cap.reset_s() {
        out.push((RESET, reset.to_string()));
        out.push((OVERAGE_RESET, reset.to_string()));
    }
    if let Some(p) = cap.period_name() {
        out.push(("anthropic-ratelimit-unified-overage-period", p.to_string()));
    }
    if cap.group_pool {
        out.push(("anthropic-ratelimit-unified-overage-scope", "group_pool".to_string()));
    }
    out
}

fn cents(nanos: i64) -> i64 {
    // Rounded to the nearest cent (10^7 nano-dollars).
    (nanos.max(0) + 5_000_000) / 10_000_000
}

fn iso(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// `GET /api/oauth/usage` for a developer with caps: the active cap (the
/// one the headers describe) in `extra_usage`, one `limits` row per cap.
pub fn usage_with_caps(caps: &[Cap]) -> Value {
    let active = fullest(caps).copied();
    let percent = |c: &Cap| (c.utilization() * 100.0).floor() as i64;
    let limits: Vec<Value> = caps
        .iter()
        .map(|c| {
            let mut row = json!({
                "kind": "spend",
                "group": c.period_name().unwrap_or("monthly"),
                "percent": percent(c),
                "severity": if c.utilization() >= 0.95 { "critical" } else if c.utilization() >= 0.75 { "warning" } else { "normal" },
                "is_active": Some(*c) == active,
            });
            if let Some(ms) = c.reset_ms {
                // The same second as the headers' reset.
                row["resets_at"] = iso(ms.div_euclid(1000) * 1000).into();
            }
            row
        })
        .collect();
    let extra = match active {
        Some(c) => json!({
            "is_enabled": true,
            "monthly_limit": cents(c.budget_nanos as i64),
            "used_credits": cents(c.spent_nanos),
            "utilization": percent(&c),
            "currency": "USD",
        }),
        None => {
            json!({"is_enabled": false, "monthly_limit": null, "used_credits": 0, "utilization": null, "currency": "USD"})
        }
    };
    json!({"extra_usage": extra, "limits": limits})
}

/// `GET /api/oauth/usage` for a developer without caps: what they spent
/// this UTC month, day and week (from Monday).
pub fn usage_without_caps(month_nanos: i64, day_nanos: i64, week_nanos: i64) -> Value {
    let amount = |n: i64| json!({"limit": null, "used_credits": cents(n), "utilization": null});
    json!({
        "extra_usage": {
            "is_enabled": true,
            "monthly_limit": null,
            "used_credits": cents(month_nanos),
            "utilization": null,
            "currency": "USD",
            "daily": amount(day_nanos),
            "weekly": amount(week_nanos),
        },
        "limits": [],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOLLAR: i64 = 1_000_000_000;

    fn cap(spent: i64, budget: i64, period: BudgetPeriod, reset_ms: Option<i64>, group_pool: bool) -> Cap {
        Cap {
            spent_nanos: spent,
            budget_nanos: budget as u64,
            period,
            reset_ms,
            group_pool,
        }
    }

    fn get<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn headers_follow_the_fullest_cap_and_warn_past_the_thresholds() {
        assert!(standing_headers(&[]).is_empty());
        let day = cap(
            82 * DOLLAR,
            100 * DOLLAR,
            BudgetPeriod::Daily,
            Some(1_786_147_200_000),
            false,
        );
        let month = cap(
            10 * DOLLAR,
            500 * DOLLAR,
            BudgetPeriod::Monthly,
            Some(1_788_000_000_000),
            true,
        );
        let h = standing_headers(&[month, day]);
        assert_eq!(get(&h, STATUS), Some("allowed_warning"));
        assert_eq!(get(&h, UTILIZATION), Some("0.82"));
        assert_eq!(get(&h, SURPASSED), Some("0.75"));
        assert_eq!(get(&h, RESET), Some("1786147200"));
        assert_eq!(
            get(&h, "anthropic-ratelimit-unified-representative-claim"),
            Some("overage")
        );
        let low = standing_headers(&[month]);
        assert_eq!(get(&low, STATUS), Some("allowed"));
        assert_eq!(get(&low, SURPASSED), None);
        let over = standing_headers(&[cap(120 * DOLLAR, 100 * DOLLAR, BudgetPeriod::Daily, None, false)]);
        assert_eq!(get(&over, UTILIZATION), Some("0.99"), "below 1 while allowing");
        assert_eq!(get(&over, SURPASSED), Some("0.95"));
    }

    #[test]
    fn a_refusal_describes_the_spent_cap_that_resets_last_without_the_claim() {
        let day = cap(
            100 * DOLLAR,
            100 * DOLLAR,
            BudgetPeriod::Daily,
            Some(1_000_000_000),
            false,
        );
        let pool = cap(
            600 * DOLLAR,
            500 * DOLLAR,
            BudgetPeriod::Monthly,
            Some(2_000_000_000),
            true,
        );
        let both = [day, pool];
        let c = blocking(&both).unwrap();
        assert!(c.group_pool);
        let h = rejected_headers(c);
        assert_eq!(get(&h, STATUS), Some("rejected"));
        assert_eq!(get(&h, "anthropic-ratelimit-unified-overage-period"), Some("monthly"));
        assert_eq!(get(&h, "anthropic-ratelimit-unified-overage-scope"), Some("group_pool"));
        assert_eq!(get(&h, "anthropic-ratelimit-unified-overage-reset"), Some("2000000"));
        assert_eq!(get(&h, "anthropic-ratelimit-unified-representative-claim"), None);
        assert_eq!(get(&h, "anthropic-ratelimit-unified-overage-status"), None);
    }

    #[test]
    fn usage_bodies_in_cents_and_whole_percents() {
        let c = cap(
            271_400_000_000,
            500 * DOLLAR,
            BudgetPeriod::Monthly,
            Some(1_790_812_800_000),
            false,
        );
        let v = usage_with_caps(&[c]);
        assert_eq!(v["extra_usage"]["monthly_limit"], 50_000);
        assert_eq!(v["extra_usage"]["used_credits"], 27_140);
        assert_eq!(v["limits"][0]["group"], "monthly");
        assert_eq!(v["limits"][0]["is_active"], true);
        assert_eq!(v["limits"][0]["resets_at"], "2026-10-01T00:00:00.000Z");
        let none = usage_without_caps(12 * DOLLAR + 40_000_000 * 10, DOLLAR, 3 * DOLLAR);
        assert_eq!(none["limits"], json!([]));
        assert_eq!(none["extra_usage"]["used_credits"], 1240);
        assert_eq!(
            none["extra_usage"]["daily"],
            json!({"limit": null, "used_credits": 100, "utilization": null})
        );
        assert!(none["extra_usage"]["monthly_limit"].is_null());
    }
}
