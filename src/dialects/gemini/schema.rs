//! JSON Schema → the OpenAPI-3.0 subset of Gemini's legacy
//! `FunctionDeclaration.parameters` (and `responseSchema`),
//! `docs/protocol-notes.md` §4.1 and pitfall 5.
//!
//! Used only when a route asks for `legacy_schema`; by default tool schemas
//! go to `parametersJsonSchema` untouched. The sanitiser is a recursive
//! whitelist of Gemini's `Schema` fields (`type format title description
//! nullable enum items properties required propertyOrdering anyOf minItems
//! maxItems minProperties maxProperties minLength maxLength pattern minimum
//! maximum example`), plus the rewrites that keep a schema's meaning where
//! the subset has another spelling:
//! - `type: ["T","null"]` → `type: T, nullable: true`; several non-null
//!   types → `anyOf`; a `null` member of `anyOf`/`oneOf` → `nullable`;
//! - `oneOf` → `anyOf`; `allOf` members merged; `$ref` inlined from the
//!   root's `$defs`/`definitions`, at most [`MAX_REF_DEPTH`] deep;
//! - `exclusiveMinimum`/`exclusiveMaximum` → inclusive bounds (`n + 1` for
//!   integers, `n` itself otherwise: slightly wider, never narrower);
//! - `const` → a one-value `enum`; an `anyOf` of string constants → one
//!   `enum`; non-string enum values become strings on string-typed (or
//!   untyped) schemas, and are moved into the description otherwise (a
//!   stringly typed integer would fail the client's own input validation);
//! - `format` kept only where Gemini documents it (`enum`, `date-time`;
//!   `float`, `double`; `int32`, `int64`); `default` is dropped (Gemini
//!   rejects defaults that do not match the type, and Claude Code's tools
//!   state defaults in descriptions);
//! - arrays without `items` get `items: {}`; empty `properties` are removed
//!   (Gemini rejects empty properties on OBJECT), and a top-level object
//!   with no properties means "no parameters"; `required` lists only
//!   properties that exist.
//!
//! Types are written in Gemini's enum spelling (`STRING`, `OBJECT`, …).

use serde_json::{Map, Value};

/// How many `$ref`s deep a schema is inlined before the rest is left open.
pub const MAX_REF_DEPTH: usize = 8;
/// Schema nodes one tool may expand to (bounds `$ref` fan-out).
const MAX_NODES: usize = 20_000;

/// The sanitised `parameters` for a tool's `input_schema`; `None` when the
/// tool takes no parameters (Gemini wants the field absent then).
pub fn legacy_parameters(schema: &Value) -> Option<Value> {
    let mut out = sanitize(schema);
    if out.get("type").and_then(Value::as_str).is_none() && out.get("anyOf").is_none() {
        out.insert("type".into(), Value::String("OBJECT".into()));
    }
    let is_object = out.get("type").and_then(Value::as_str) == Some("OBJECT");
    if is_object && out.get("properties").is_none() {
        return None;
    }
    Some(Value::Object(out))
}

/// A schema in Gemini's legacy subset (see the module documentation).
pub fn sanitize(schema: &Value) -> Map<String, Value> {
    let mut ctx = Ctx { root: schema, nodes: 0 };
    ctx.clean(schema, 0)
}

struct Ctx<'a> {
    root: &'a Value,
    nodes: usize,
}

/// JSON Schema type name → Gemini's.
fn gemini_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "string" => "STRING",
        "number" => "NUMBER",
        "integer" => "INTEGER",
        "boolean" => "BOOLEAN",
        "array" => "ARRAY",
        "object" => "OBJECT",
        "null" => "NULL",
        _ => return None,
    })
}

fn format_allowed(ty: Option<&str>, format: &str) -> bool {
    matches!(
        (ty, format),
        (Some("STRING"), "enum" | "date-time")
            | (Some("NUMBER"), "float" | "double")
            | (Some("INTEGER"), "int32" | "int64")
    )
}

/// What one schema object says, gathered before the output is written in
/// a fixed key order.
#[derive(Default)]
struct Parts {
    types: Vec<&'static str>,
    nullable: bool,
    format: Option<String>,
    title: Option<Value>,
    pattern: Option<Value>,
    description: Option<String>,
    enumeration: Option<Vec<Value>>,
    items: Option<Map<String, Value>>,
    properties: Option<Map<String, Value>>,
    required: Vec<String>,
    ordering: Option<Vec<Value>>,
    any_of: Option<Vec<Map<String, Value>>>,
    counts: Vec<(&'static str, Value)>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    exclusive_minimum: Option<f64>,
    exclusive_maximum: Option<f64>,
    /// Draft-4 boolean `exclusiveMinimum`/`exclusiveMaximum`.
    minimum_exclusive: bool,
    maximum_exclusive: bool,
    raw_minimum: Option<Value>,
    raw_maximum: Option<Value>,
    example: Option<Value>,
}

impl Ctx<'_> {
    fn clean(&mut self, schema: &Value, ref_depth: usize) -> Map<String, Value> {
        self.nodes += 1;
        let Some(s) = schema.as_object() else {
            // `true`, `false` and non-schemas: an open schema.
            return Map::new();
        };
        if self.nodes > MAX_NODES {
            return Map::new();
        }
        let mut p = Parts::default();
        if let Some(reference) = s.get("$ref").and_then(Value::as_str) {
            let target = reference
                .strip_prefix('#')
                .and_then(|pointer| self.root.pointer(pointer))
                .filter(|_| ref_depth < MAX_REF_DEPTH);
            if let Some(target) = target {
                let resolved = self.clean(target, ref_depth + 1);
                self.absorb(&mut p, &resolved);
            }
        }
        if let Some(members) = s.get("allOf").and_then(Value::as_array) {
            for m in members {
                let cleaned = self.clean(m, ref_depth);
                self.absorb(&mut p, &cleaned);
            }
        }
        self.gather(s, &mut p, ref_depth);
        finish(p)
    }

    /// Read the keywords of `s` into `p`; later keywords override earlier
    /// ones, so siblings of `$ref`/`allOf` win over what those brought.
    fn gather(&mut self, s: &Map<String, Value>, p: &mut Parts, ref_depth: usize) {
        for (key, v) in s {
            match key.as_str() {
                "type" => {
                    let names: Vec<&str> = match v {
                        Value::String(t) => vec![t.as_str()],
                        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                        _ => Vec::new(),
                    };
                    let mapped: Vec<&'static str> = names
                        .iter()
                        .filter_map(|t| gemini_type(&t.to_ascii_lowercase()))
                        .collect();
                    if !mapped.is_empty() {
                        p.nullable |= mapped.contains(&"NULL");
                        p.types = mapped.into_iter().filter(|t| *t != "NULL").collect();
                    }
                }
                "nullable" => p.nullable |= v.as_bool().unwrap_or(false),
                "format" => p.format = v.as_str().map(str::to_string),
                "title" if v.is_string() => p.title = Some(v.clone()),
                "pattern" if v.is_string() => p.pattern = Some(v.clone()),
                "description" => {
                    if let Some(d) = v.as_str() {
                        p.description = Some(d.to_string());
                    }
                }
                "enum" => {
                    if let Some(values) = v.as_array() {
                        p.enumeration = Some(values.clone());
                    }
                }
                "const" => p.enumeration = Some(vec![v.clone()]),
                "properties" => {
                    if let Some(props) = v.as_object() {
                        let mut out = p.properties.take().unwrap_or_default();
                        for (name, sub) in props {
                            out.insert(name.clone(), Value::Object(self.clean(sub, ref_depth)));
                        }
                        p.properties = Some(out);
                    }
                }
                "required" => {
                    for r in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
                        if !p.required.iter().any(|x| x == r) {
                            p.required.push(r.to_string());
                        }
                    }
                }
                "items" => {
                    p.items = match v {
                        Value::Array(tuple) => tuple.first().map(|first| self.clean(first, ref_depth)),
                        other => Some(self.clean(other, ref_depth)),
                    }
                }
                "prefixItems" if !s.contains_key("items") => {
                    p.items = v
                        .as_array()
                        .and_then(|tuple| tuple.first())
                        .map(|first| self.clean(first, ref_depth));
                }
                "anyOf" | "oneOf" => {
                    if let Some(members) = v.as_array() {
                        let mut cleaned = p.any_of.take().unwrap_or_default();
                        cleaned.extend(members.iter().map(|m| self.clean(m, ref_depth)));
                        p.any_of = Some(cleaned);
                    }
                }
                "propertyOrdering" if v.is_array() => p.ordering = v.as_array().cloned(),
                "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties" | "maxProperties" => {
                    if let Some(n) = v
                        .as_u64()
                        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    {
                        let key = match key.as_str() {
                            "minLength" => "minLength",
                            "maxLength" => "maxLength",
                            "minItems" => "minItems",
                            "maxItems" => "maxItems",
                            "minProperties" => "minProperties",
                            _ => "maxProperties",
                        };
                        p.counts.retain(|(k, _)| *k != key);
                        p.counts.push((key, Value::from(n)));
                    }
                }
                "minimum" => {
                    p.minimum = v.as_f64();
                    p.raw_minimum = v.is_number().then(|| v.clone());
                }
                "maximum" => {
                    p.maximum = v.as_f64();
                    p.raw_maximum = v.is_number().then(|| v.clone());
                }
                "exclusiveMinimum" => match v {
                    Value::Bool(b) => p.minimum_exclusive = *b,
                    other => p.exclusive_minimum = other.as_f64(),
                },
                "exclusiveMaximum" => match v {
                    Value::Bool(b) => p.maximum_exclusive = *b,
                    other => p.exclusive_maximum = other.as_f64(),
                },
                "example" => p.example = Some(v.clone()),
                // `$schema`, `$id`, `$defs`, `additionalProperties`,
                // `propertyNames`, `multipleOf`, `default`, `examples`,
                // `not`, `if`/`then`/`else`, … have no legacy spelling.
                _ => {}
            }
        }
    }

    /// Merge an already cleaned schema (a `$ref` target or an `allOf`
    /// member) into `p`.
    fn absorb(&mut self, p: &mut Parts, cleaned: &Map<String, Value>) {
        let mut raw = cleaned.clone();
        // Cleaned types are already in Gemini's spelling.
        if let Some(t) = raw.remove("type").and_then(|t| t.as_str().map(str::to_string)) {
            if let Some(mapped) = gemini_type(&t.to_ascii_lowercase()) {
                p.types = vec![mapped];
            }
        }
        let props = raw.remove("properties");
        self.gather(&raw, p, MAX_REF_DEPTH);
        if let Some(Value::Object(props)) = props {
            let out = p.properties.get_or_insert_with(Map::new);
            for (k, v) in props {
                out.insert(k, v);
            }
        }
    }
}

/// Write `p` out in a fixed key order, applying the rewrites.
fn finish(mut p: Parts) -> Map<String, Value> {
    // A `null` member of anyOf/oneOf is `nullable`; a single remaining
    // member is the schema itself.
    if let Some(members) = p.any_of.take() {
        let before = members.len();
        let mut members: Vec<Map<String, Value>> = members.into_iter().filter(|m| !is_null_schema(m)).collect();
        p.nullable |= members.len() < before;
        if let Some(values) = string_constants(&members) {
            p.types = vec!["STRING"];
            p.enumeration = Some(values);
        } else if members.len() == 1 && p.types.is_empty() && p.properties.is_none() && p.items.is_none() {
            // `anyOf: [X, null]`: X itself, nullable, with the outer description.
            let mut out = members.remove(0);
            if p.nullable {
                out.insert("nullable".into(), Value::Bool(true));
            }
            if let Some(d) = p.description.take() {
                out.insert("description".into(), Value::String(d));
            }
            return reorder(out);
        } else if !members.is_empty() {
            p.any_of = Some(members);
        }
    }

    if p.types.is_empty() && p.any_of.is_none() {
        if p.properties.is_some() {
            p.types = vec!["OBJECT"];
        } else if p.items.is_some() {
            p.types = vec!["ARRAY"];
        } else if p.enumeration.as_ref().is_some_and(|e| e.iter().any(|v| !v.is_null())) {
            p.types = vec!["STRING"];
        }
    }
    let mut out = Map::new();
    match p.types.as_slice() {
        [] => {}
        [one] => {
            out.insert("type".into(), Value::String((*one).into()));
        }
        several => {
            // Several types: one anyOf member each.
            let members = several
                .iter()
                .map(|t| {
                    let mut m = Map::new();
                    m.insert("type".into(), Value::String((*t).into()));
                    m
                })
                .collect();
            p.any_of = Some(members);
        }
    }
    let ty = out.get("type").and_then(Value::as_str).map(str::to_string);
    let ty = ty.as_deref();

    if let Some(format) = p.format.as_deref().filter(|f| format_allowed(ty, f)) {
        out.insert("format".into(), Value::String(format.into()));
    }
    if let Some(title) = p.title.take() {
        out.insert("title".into(), title);
    }

    // enum: strings only; `null` means nullable.
    let mut description = p.description.take();
    if let Some(values) = p.enumeration.take() {
        p.nullable |= values.iter().any(Value::is_null);
        let values: Vec<&Value> = values.iter().filter(|v| !v.is_null()).collect();
        let all_strings = values.iter().all(|v| v.is_string());
        if !values.is_empty() {
            if all_strings || matches!(ty, None | Some("STRING")) {
                let strings = values
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Value::String(s.clone()),
                        other => Value::String(other.to_string()),
                    })
                    .collect();
                if ty.is_none() {
                    out.insert("type".into(), Value::String("STRING".into()));
                }
                out.insert("enum".into(), Value::Array(strings));
            } else {
                let listed: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                let note = format!("Allowed values: {}.", listed.join(", "));
                description = Some(match description {
                    Some(d) if !d.is_empty() => format!("{d} {note}"),
                    _ => note,
                });
            }
        }
    }
    if let Some(d) = description {
        out.insert("description".into(), Value::String(d));
    }
    if p.nullable {
        out.insert("nullable".into(), Value::Bool(true));
    }

    let ty = out.get("type").and_then(Value::as_str).map(str::to_string);
    let ty = ty.as_deref();
    if let Some(items) = p.items.take() {
        out.insert("items".into(), Value::Object(items));
    } else if ty == Some("ARRAY") {
        out.insert("items".into(), Value::Object(Map::new()));
    }
    let props = p.properties.take().filter(|props| !props.is_empty());
    if let Some(props) = props {
        let required: Vec<Value> = p
            .required
            .iter()
            .filter(|r| props.contains_key(r.as_str()))
            .map(|r| Value::String(r.clone()))
            .collect();
        let ordering: Option<Vec<Value>> = p.ordering.take().map(|o| {
            o.into_iter()
                .filter(|k| k.as_str().is_some_and(|k| props.contains_key(k)))
                .collect()
        });
        out.insert("properties".into(), Value::Object(props));
        if !required.is_empty() {
            out.insert("required".into(), Value::Array(required));
        }
        if let Some(ordering) = ordering.filter(|o| !o.is_empty()) {
            out.insert("propertyOrdering".into(), Value::Array(ordering));
        }
    }
    if let Some(members) = p.any_of.take() {
        out.insert(
            "anyOf".into(),
            Value::Array(members.into_iter().map(Value::Object).collect()),
        );
    }
    for (k, v) in p.counts {
        out.insert(k.into(), v);
    }
    if let Some(pattern) = p.pattern {
        out.insert("pattern".into(), pattern);
    }
    let integer = ty == Some("INTEGER");
    if let Some(v) = bound(
        p.raw_minimum,
        p.minimum,
        p.minimum_exclusive,
        p.exclusive_minimum,
        integer,
        1.0,
    ) {
        out.insert("minimum".into(), v);
    }
    if let Some(v) = bound(
        p.raw_maximum,
        p.maximum,
        p.maximum_exclusive,
        p.exclusive_maximum,
        integer,
        -1.0,
    ) {
        out.insert("maximum".into(), v);
    }
    if let Some(example) = p.example {
        out.insert("example".into(), example);
    }
    out
}

/// An inclusive bound from `minimum`/`maximum` and their exclusive forms.
/// `step` is +1 for a lower bound, -1 for an upper one.
fn bound(
    raw: Option<Value>,
    inclusive: Option<f64>,
    draft4_exclusive: bool,
    exclusive: Option<f64>,
    integer: bool,
    step: f64,
) -> Option<Value> {
    let tighten = |n: f64| {
        if integer && n.fract() == 0.0 {
            n + step
        } else {
            n
        }
    };
    let from_inclusive = inclusive.map(|n| if draft4_exclusive { tighten(n) } else { n });
    let from_exclusive = exclusive.map(tighten);
    let chosen = match (from_inclusive, from_exclusive) {
        (Some(a), Some(b)) => Some(if step > 0.0 { a.max(b) } else { a.min(b) }),
        (a, b) => a.or(b),
    }?;
    // Keep the client's spelling when nothing changed.
    if let (Some(raw), Some(n)) = (raw, inclusive) {
        if n == chosen {
            return Some(raw);
        }
    }
    Some(number(chosen))
}

fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

fn is_null_schema(m: &Map<String, Value>) -> bool {
    m.get("type").and_then(Value::as_str) == Some("NULL")
        || (m.get("nullable") == Some(&Value::Bool(true)) && m.len() == 1)
}

/// The values of an `anyOf` whose members are all string enums (the
/// usual spelling of `const` alternatives), in order.
fn string_constants(members: &[Map<String, Value>]) -> Option<Vec<Value>> {
    if members.len() < 2 {
        return None;
    }
    let mut values = Vec::new();
    for m in members {
        let only_enum = m
            .keys()
            .all(|k| matches!(k.as_str(), "type" | "enum" | "description" | "title"))
            && m.get("type").and_then(Value::as_str).is_none_or(|t| t == "STRING");
        let e = m.get("enum").and_then(Value::as_array).filter(|_| only_enum)?;
        for v in e {
            if !values.contains(v) {
                values.push(v.clone());
            }
        }
    }
    Some(values)
}

/// Re-order a hoisted member's keys like [`finish`] writes them.
fn reorder(mut m: Map<String, Value>) -> Map<String, Value> {
    const ORDER: &[&str] = &[
        "type",
        "format",
        "title",
        "description",
        "enum",
        "nullable",
        "items",
        "properties",
        "required",
        "propertyOrdering",
        "anyOf",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "minProperties",
        "maxProperties",
        "pattern",
        "minimum",
        "maximum",
        "example",
    ];
    let mut out = Map::new();
    for k in ORDER {
        if let Some(v) = m.remove(*k) {
            out.insert((*k).into(), v);
        }
    }
    out.extend(m);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn clean(v: Value) -> Value {
        Value::Object(sanitize(&v))
    }

    #[test]
    fn type_arrays_become_nullable() {
        assert_eq!(
            clean(json!({"type": ["string", "null"], "description": "d"})),
            json!({"type": "STRING", "description": "d", "nullable": true})
        );
        assert_eq!(
            clean(json!({"type": ["string", "integer"]})),
            json!({"anyOf": [{"type": "STRING"}, {"type": "INTEGER"}]})
        );
    }

    #[test]
    fn exclusive_bounds_become_inclusive() {
        assert_eq!(
            clean(json!({"type": "integer", "exclusiveMinimum": 0, "maximum": 10})),
            json!({"type": "INTEGER", "minimum": 1, "maximum": 10})
        );
        assert_eq!(
            clean(json!({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5})),
            json!({"type": "NUMBER", "minimum": 0, "maximum": 1.5})
        );
        assert_eq!(
            clean(json!({"type": "integer", "minimum": 5, "exclusiveMinimum": true})),
            json!({"type": "INTEGER", "minimum": 6})
        );
    }

    #[test]
    fn enums_consts_and_refs() {
        assert_eq!(
            clean(json!({"anyOf": [{"const": "error"}, {"const": "warning"}], "description": "sev"})),
            json!({"type": "STRING", "description": "sev", "enum": ["error", "warning"]})
        );
        assert_eq!(
            clean(json!({"type": "integer", "enum": [1, 2, 3]})),
            json!({"type": "INTEGER", "description": "Allowed values: 1, 2, 3."})
        );
        assert_eq!(
            clean(json!({"enum": [1, "a", null]})),
            json!({"type": "STRING", "enum": ["1", "a"], "nullable": true})
        );
        let recursive = json!({
            "type": "object",
            "properties": {"node": {"$ref": "#/$defs/Node"}},
            "$defs": {"Node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/Node"}, "v": {"type": "string"}}}}
        });
        let out = clean(recursive);
        let mut depth = 0;
        let mut at = &out["properties"]["node"];
        while let Some(next) = at.get("properties").and_then(|p| p.get("child")) {
            depth += 1;
            at = next;
        }
        assert_eq!(depth, MAX_REF_DEPTH);
        assert!(!out.to_string().contains("$ref"));
    }

    #[test]
    fn arrays_objects_and_formats() {
        assert_eq!(clean(json!({"type": "array"})), json!({"type": "ARRAY", "items": {}}));
        assert_eq!(
            clean(
                json!({"type": "object", "properties": {}, "additionalProperties": {"type": "string"}, "required": ["x"]})
            ),
            json!({"type": "OBJECT"})
        );
        assert_eq!(
            clean(json!({"type": "string", "format": "uri", "default": "x"})),
            json!({"type": "STRING"})
        );
        assert_eq!(
            clean(json!({"type": "string", "format": "date-time"})),
            json!({"type": "STRING", "format": "date-time"})
        );
        assert_eq!(
            legacy_parameters(&json!({"type": "object", "properties": {}, "additionalProperties": false})),
            None
        );
        // Property names are data, not keywords.
        assert_eq!(
            clean(
                json!({"type": "object", "properties": {"default": {"type": "string"}, "const": {"type": "boolean"}}, "required": ["default", "gone"]})
            ),
            json!({"type": "OBJECT", "properties": {"default": {"type": "STRING"}, "const": {"type": "BOOLEAN"}}, "required": ["default"]})
        );
    }
}
