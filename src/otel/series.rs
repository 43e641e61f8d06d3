//! The gateway's GenAI metrics, aggregated in memory: one series per label
//! set a finished request can have, each holding its histograms and its
//! request count, exported as cumulative OTLP metrics.
//!
//! A request costs one lock and one hash of its borrowed names (the lookup
//! key is never owned until a new series is made), then a few additions:
//! no attribute list is built and nothing is allocated for a series that
//! exists. The instruments' narrower attribute sets (the token histogram
//! has no status, say) are folded from the series when an export is built,
//! once an interval, off the request path.
//!
//! Series are bounded ([`MAX_SERIES`]): requests past the bound are counted
//! in one overflow series marked `otel.metric.overflow=true`, as the
//! OpenTelemetry SDKs do, so a client inventing model names cannot grow
//! the gateway's memory.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hashbrown::{DefaultHashBuilder, HashTable};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::{kv, unix_nanos, Finished};

/// The most label sets kept apart; past it, one overflow series.
pub(super) const MAX_SERIES: usize = 2000;

/// Bucket bounds the GenAI semantic conventions advise.
const TOKEN_BOUNDS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];
const DURATION_BOUNDS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
const TTFT_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// `gen_ai.token.type`, in the order of [`Series::tokens`].
const TOKEN_TYPES: [&str; 4] = ["input", "output", "cache_read", "cache_write"];

/// A series' labels: borrowed from a request (`Labels<&str>`, the lookup
/// key, hashed), or owned by the series (`Labels<Arc<str>>`, shared: a
/// snapshot's copy costs no allocation).
#[derive(Clone, Copy, Hash, PartialEq, Eq, Debug)]
struct Labels<S> {
    system: Option<S>,
    request_model: Option<S>,
    response_model: Option<S>,
    error: Option<S>,
    status: u16,
    cache_hit: bool,
    provider: Option<S>,
    overflow: bool,
}

impl<'a> Labels<&'a str> {
    fn of(f: &Finished<'a>) -> Labels<&'a str> {
        Labels {
            system: f.system,
            request_model: f.request_model,
            response_model: f.response_model,
            error: f.error,
            status: f.status,
            cache_hit: f.cache_hit,
            provider: f.provider,
            overflow: false,
        }
    }

    const OVERFLOW: Labels<&'static str> = Labels {
        system: None,
        request_model: None,
        response_model: None,
        error: None,
        status: 0,
        cache_hit: false,
        provider: None,
        overflow: true,
    };

    fn owned(&self) -> Labels<Arc<str>> {
        let own = |s: Option<&str>| s.map(Arc::from);
        Labels {
            system: own(self.system),
            request_model: own(self.request_model),
            response_model: own(self.response_model),
            error: own(self.error),
            status: self.status,
            cache_hit: self.cache_hit,
            provider: own(self.provider),
            overflow: self.overflow,
        }
    }
}

impl Labels<Arc<str>> {
    fn borrowed(&self) -> Labels<&str> {
        Labels {
            system: self.system.as_deref(),
            request_model: self.request_model.as_deref(),
            response_model: self.response_model.as_deref(),
            error: self.error.as_deref(),
            status: self.status,
            cache_hit: self.cache_hit,
            provider: self.provider.as_deref(),
            overflow: self.overflow,
        }
    }
}

/// The most buckets a histogram here has (the longest bounds, plus one).
const MAX_BUCKETS: usize = 1 + max(TTFT_BOUNDS.len(), max(DURATION_BOUNDS.len(), TOKEN_BOUNDS.len()));

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// An explicit-bucket histogram, plain data (a copy is a `memcpy`).
#[derive(Clone, Copy, Debug)]
struct Hist {
    bounds: &'static [f64],
    counts: [u64; MAX_BUCKETS],
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Hist {
    fn new(bounds: &'static [f64]) -> Hist {
        Hist {
            bounds,
            counts: [0; MAX_BUCKETS],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn add(&mut self, v: f64) {
        // OTLP buckets are upper-inclusive: (bound[i-1], bound[i]].
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.count += o.count;
        self.sum += o.sum;
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    fn point(&self, attributes: Vec<KeyValue>, start: u64, now: u64) -> HistogramDataPoint {
        let buckets = self.bounds.len() + 1;
        HistogramDataPoint {
            attributes,
            start_time_unix_nano: start,
            time_unix_nano: now,
            count: self.count,
            sum: Some(self.sum),
            bucket_counts: self.counts[..buckets].to_vec(),
            explicit_bounds: self.bounds.to_vec(),
            exemplars: Vec::new(),
            flags: 0,
            min: Some(self.min),
            max: Some(self.max),
        }
    }
}

/// One label set's measurements since the table was made.
#[derive(Clone, Debug)]
struct Series {
    labels: Labels<Arc<str>>,
    ttft: Hist,
    duration: Hist,
    tokens: [Hist; 4],
    requests: u64,
}

impl Series {
    fn new(labels: Labels<Arc<str>>) -> Series {
        Series {
            labels,
            ttft: Hist::new(TTFT_BOUNDS),
            duration: Hist::new(DURATION_BOUNDS),
            tokens: std::array::from_fn(|_| Hist::new(TOKEN_BOUNDS)),
            requests: 0,
        }
    }

    fn add(&mut self, f: &Finished<'_>) {
        if let Some(t) = f.ttft {
            self.ttft.add(t.as_secs_f64());
        }
        if let Some(u) = f.usage {
            // Input and output always; the cache kinds when the answer used
            // the prompt cache (a zero there is not a sample of cache use).
            let n = [
                u.input_tokens,
                u.output_tokens,
                u.cache_read_input_tokens,
                u.cache_creation_input_tokens,
            ];
            for (i, (h, n)) in self.tokens.iter_mut().zip(n).enumerate() {
                if i < 2 || n > 0 {
                    h.add(n as f64);
                }
            }
        }
        self.duration
            .add(f.end.duration_since(f.start).unwrap_or(Duration::ZERO).as_secs_f64());
        self.requests += 1;
    }
}

/// Every series, behind one lock.
#[derive(Debug)]
pub(super) struct Table {
    inner: Mutex<Inner>,
    hasher: DefaultHashBuilder,
    limit: usize,
    /// Every point's `start_time_unix_nano`: the cumulative streams all
    /// count from the table's making (as the OpenTelemetry SDKs do), so a
    /// stream's start never moves when a series is first seen later.
    start: u64,
}

#[derive(Debug, Default)]
struct Inner {
    series: HashTable<Series>,
    overflow: Option<Box<Series>>,
}

impl Table {
    pub(super) fn new(limit: usize, start: SystemTime) -> Table {
        Table {
            inner: Mutex::new(Inner::default()),
            hasher: DefaultHashBuilder::default(),
            limit,
            start: unix_nanos(start),
        }
    }

    /// Add a finished request to its series.
    pub(super) fn record(&self, f: &Finished<'_>) {
        let key = Labels::of(f);
        let hash = self.hasher.hash_one(key);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Inner { series, overflow } = &mut *inner;
        if let Some(s) = series.find_mut(hash, |s| s.labels.borrowed() == key) {
            s.add(f);
            return;
        }
        if series.len() < self.limit {
            let hasher = &self.hasher;
            let entry = series.insert_unique(hash, Series::new(key.owned()), |s| hasher.hash_one(s.labels.borrowed()));
            entry.into_mut().add(f);
        } else {
            overflow
                .get_or_insert_with(|| Box::new(Series::new(Labels::OVERFLOW.owned())))
                .add(f);
        }
    }

    /// The export of every series so far (cumulative), or `None` before
    /// the first request. The series are copied under the lock; the
    /// export is built after it is released.
    pub(super) fn export(
        &self,
        resource: &Resource,
        scope: &InstrumentationScope,
        now: SystemTime,
    ) -> Option<ExportMetricsServiceRequest> {
        let series: Vec<Series> = {
            let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner
                .series
                .iter()
                .cloned()
                .chain(inner.overflow.as_deref().cloned())
                .collect()
        };
        if series.is_empty() {
            return None;
        }
        let (start, now) = (self.start, unix_nanos(now).max(self.start));
        let metrics = vec![
            histogram(
                "gen_ai.client.token.usage",
                "{token}",
                "Tokens used per request, by type (input, output, cache_read, cache_write)",
                fold(&series, start, now, |s, out| {
                    for (h, kind) in s.tokens.iter().zip(TOKEN_TYPES) {
                        out(
                            Projection {
                                token_type: Some(kind),
                                ..Projection::base(&s.labels)
                            },
                            h,
                        );
                    }
                }),
            ),
            histogram(
                "gen_ai.client.operation.duration",
                "s",
                "Request duration, through the end of the answer",
                fold(&series, start, now, |s, out| {
                    out(
                        Projection {
                            error: s.labels.error.as_deref(),
                            ..Projection::base(&s.labels)
                        },
                        &s.duration,
                    )
                }),
            ),
            histogram(
                "gen_ai.server.time_to_first_token",
                "s",
                "Time to the first byte of the answer",
                fold(&series, start, now, |s, out| out(Projection::base(&s.labels), &s.ttft)),
            ),
            Metric {
                name: "modelgate.requests".into(),
                description: "Requests, by provider, status and cache hit".into(),
                unit: String::new(),
                metadata: Vec::new(),
                data: Some(metric::Data::Sum(Sum {
                    data_points: series
                        .iter()
                        .map(|s| NumberDataPoint {
                            attributes: attributes(&Projection::full(&s.labels)),
                            start_time_unix_nano: start,
                            time_unix_nano: now,
                            exemplars: Vec::new(),
                            flags: 0,
                            value: Some(number_data_point::Value::AsInt(
                                i64::try_from(s.requests).unwrap_or(i64::MAX),
                            )),
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
            },
        ];
        Some(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics: metrics
                        .into_iter()
                        .filter(|m| match &m.data {
                            Some(metric::Data::Histogram(h)) => !h.data_points.is_empty(),
                            _ => true,
                        })
                        .collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        })
    }
}

/// The attributes one instrument reports: a series' labels, narrowed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
struct Projection<'a> {
    system: Option<&'a str>,
    request_model: Option<&'a str>,
    response_model: Option<&'a str>,
    token_type: Option<&'static str>,
    error: Option<&'a str>,
    status: Option<u16>,
    cache_hit: Option<bool>,
    provider: Option<&'a str>,
    overflow: bool,
}

impl<'a> Projection<'a> {
    /// `gen_ai.operation.name`, `gen_ai.system` and the models.
    fn base(l: &'a Labels<Arc<str>>) -> Projection<'a> {
        Projection {
            system: l.system.as_deref(),
            request_model: l.request_model.as_deref(),
            response_model: l.response_model.as_deref(),
            overflow: l.overflow,
            ..Projection::default()
        }
    }

    /// Everything (the request counter's attributes).
    fn full(l: &'a Labels<Arc<str>>) -> Projection<'a> {
        Projection {
            error: l.error.as_deref(),
            status: (!l.overflow).then_some(l.status),
            cache_hit: (!l.overflow).then_some(l.cache_hit),
            provider: l.provider.as_deref(),
            ..Projection::base(l)
        }
    }
}

fn attributes(p: &Projection<'_>) -> Vec<KeyValue> {
    let s = |v: &str| any_value::Value::StringValue(v.into());
    if p.overflow {
        return vec![kv("otel.metric.overflow", any_value::Value::BoolValue(true))];
    }
    let mut out = vec![kv("gen_ai.operation.name", s("chat"))];
    for (k, v) in [
        ("gen_ai.system", p.system),
        ("gen_ai.request.model", p.request_model),
        ("gen_ai.response.model", p.response_model),
        ("gen_ai.token.type", p.token_type),
        ("error.type", p.error),
    ] {
        if let Some(v) = v {
            out.push(kv(k, s(v)));
        }
    }
    if let Some(c) = p.status {
        out.push(kv(
            "http.response.status_code",
            any_value::Value::IntValue(i64::from(c)),
        ));
    }
    if let Some(h) = p.cache_hit {
        out.push(kv("modelgate.cache_hit", any_value::Value::BoolValue(h)));
    }
    if let Some(v) = p.provider {
        out.push(kv("modelgate.provider", s(v)));
    }
    out
}

/// The data points of one histogram: each series' histogram(s) under its
/// projection, merged where projections meet; empty histograms left out.
fn fold<'a>(
    series: &'a [Series],
    start: u64,
    now: u64,
    each: impl Fn(&'a Series, &mut dyn FnMut(Projection<'a>, &'a Hist)),
) -> Vec<HistogramDataPoint> {
    let mut merged: BTreeMap<Projection<'a>, Hist> = BTreeMap::new();
    for s in series {
        each(s, &mut |p, h| {
            if h.count == 0 {
                return;
            }
            merged.entry(p).and_modify(|m| m.merge(h)).or_insert(*h);
        });
    }
    merged
        .into_iter()
        .map(|(p, h)| h.point(attributes(&p), start, now))
        .collect()
}

fn histogram(name: &str, unit: &str, description: &str, data_points: Vec<HistogramDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        description: description.into(),
        unit: unit.into(),
        metadata: Vec::new(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialects::Usage;

    fn request(model: &'static str, status: u16, cache_read: u64, ms: u64) -> Finished<'static> {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        Finished {
            trace: None,
            start,
            end: start + Duration::from_millis(ms),
            ttft: Some(Duration::from_millis(ms / 2)),
            request_id: "r",
            method: "POST",
            path: "/v1/messages",
            status,
            system: Some("anthropic"),
            provider: Some("a"),
            account: Some("a"),
            request_model: Some(model),
            response_model: Some(model),
            key: Some("dev"),
            team: None,
            attempts: 1,
            cache_hit: false,
            stream: false,
            error: (status >= 400).then_some("rate_limited"),
            usage: (status < 400).then_some(Usage {
                input_tokens: 10,
                output_tokens: 100,
                cache_read_input_tokens: cache_read,
                cache_creation_input_tokens: 0,
            }),
            cost_usd: None,
        }
    }

    fn attr<'a>(p: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        p.iter().find(|a| a.key == key)?.value.as_ref()?.value.as_ref()
    }

    fn export(t: &Table) -> Vec<Metric> {
        let scope = InstrumentationScope::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        t.export(&Resource::default(), &scope, now)
            .unwrap()
            .resource_metrics
            .remove(0)
            .scope_metrics
            .remove(0)
            .metrics
    }

    fn sum_start(m: &Metric) -> u64 {
        match &m.data {
            Some(metric::Data::Sum(s)) => s.data_points[0].start_time_unix_nano,
            _ => panic!("{m:?}"),
        }
    }

    fn hist(m: &Metric) -> &[HistogramDataPoint] {
        match &m.data {
            Some(metric::Data::Histogram(h)) => &h.data_points,
            _ => panic!("{m:?}"),
        }
    }

    #[test]
    fn requests_fold_into_each_instrument_s_attributes() {
        let t = Table::new(MAX_SERIES, SystemTime::UNIX_EPOCH + Duration::from_secs(1_699_999_000));
        assert!(t
            .export(
                &Resource::default(),
                &InstrumentationScope::default(),
                SystemTime::now()
            )
            .is_none());
        t.record(&request("m1", 200, 0, 100));
        t.record(&request("m1", 200, 7, 300));
        t.record(&request("m1", 429, 0, 20));
        t.record(&request("m2", 200, 0, 50));
        let metrics = export(&t);
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gen_ai.client.token.usage",
                "gen_ai.client.operation.duration",
                "gen_ai.server.time_to_first_token",
                "modelgate.requests"
            ]
        );
        // Tokens: m1 input, output, cache_read (one sample of 7); m2 input, output.
        let tokens = hist(&metrics[0]);
        assert_eq!(tokens.len(), 5, "{tokens:?}");
        let m1_out = tokens
            .iter()
            .find(|p| {
                attr(&p.attributes, "gen_ai.request.model") == Some(&any_value::Value::StringValue("m1".into()))
                    && attr(&p.attributes, "gen_ai.token.type") == Some(&any_value::Value::StringValue("output".into()))
            })
            .unwrap();
        assert_eq!((m1_out.count, m1_out.sum), (2, Some(200.0)));
        assert_eq!(m1_out.bucket_counts.len(), TOKEN_BOUNDS.len() + 1);
        assert_eq!(m1_out.explicit_bounds, TOKEN_BOUNDS);
        // 100 is in (64, 256].
        assert_eq!(m1_out.bucket_counts[TOKEN_BOUNDS.partition_point(|b| *b < 100.0)], 2);
        assert!(attr(&m1_out.attributes, "http.response.status_code").is_none());
        // Duration keeps error.type apart: m1 ok, m1 rate_limited, m2.
        let duration = hist(&metrics[1]);
        assert_eq!(duration.len(), 3);
        let limited = duration
            .iter()
            .find(|p| attr(&p.attributes, "error.type").is_some())
            .unwrap();
        assert_eq!((limited.count, limited.min, limited.max), (1, Some(0.02), Some(0.02)));
        // TTFT merges m1's three requests.
        let ttft = hist(&metrics[2]);
        assert_eq!(ttft.iter().map(|p| p.count).collect::<Vec<_>>(), [3, 1]);
        // Every stream counts from the table's making.
        assert_eq!(ttft[0].start_time_unix_nano, 1_699_999_000_000_000_000);
        assert_eq!(sum_start(&metrics[3]), 1_699_999_000_000_000_000);
        assert_eq!(ttft[0].time_unix_nano, 1_700_000_100_000_000_000);
        // The counter: one point per label set.
        let Some(metric::Data::Sum(sum)) = &metrics[3].data else {
            panic!()
        };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        let counts: Vec<i64> = sum
            .data_points
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(n)) => n,
                _ => panic!(),
            })
            .collect();
        assert_eq!(counts.iter().sum::<i64>(), 4);
        assert_eq!(counts.len(), 3);
        assert!(sum
            .data_points
            .iter()
            .all(|p| attr(&p.attributes, "modelgate.provider").is_some()));
    }

    #[test]
    fn series_past_the_bound_fold_into_one_overflow_series() {
        let t = Table::new(3, SystemTime::UNIX_EPOCH);
        let names: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
        for name in &names {
            let name: &str = name;
            let mut f = request("x", 200, 0, 10);
            f.request_model = Some(name);
            t.record(&f);
            t.record(&f);
        }
        let metrics = export(&t);
        let Some(metric::Data::Sum(sum)) = &metrics[3].data else {
            panic!()
        };
        assert_eq!(sum.data_points.len(), 4, "three series and the overflow");
        let overflow = sum
            .data_points
            .iter()
            .find(|p| attr(&p.attributes, "otel.metric.overflow") == Some(&any_value::Value::BoolValue(true)))
            .unwrap();
        assert_eq!(overflow.value, Some(number_data_point::Value::AsInt(14)));
        assert_eq!(overflow.attributes.len(), 1);
    }
}
