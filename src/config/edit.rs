//! Comment-preserving edits of the config file, for the commands that change
//! it (`keys create|revoke`, `provider add|remove|enable|…`, `route add|remove`).
//!
//! No YAML library round-trips comments, so this module edits *lines*: it
//! finds a top-level key's block and the entries in it, and splices rendered
//! lines in or out. Every other byte of the file stays as it was: comments,
//! blank lines, key order, CRLF line ends, a missing final newline.
//!
//! Two guards keep a line editor honest. Shapes it does not understand
//! (multi-line flow collections, anchors on the edited key, mixed
//! indentation) are refused with their line instead of guessed at. And every
//! edit is checked against a real YAML parse: the new document must equal the
//! old one with exactly the intended change, or nothing is returned.
//!
//! [`edit_file`] and [`write_validated`] then validate the result with the
//! caller's [`Check`] (the commands pass `runtime::check`: exactly as
//! `serve` loads a file) and replace the file atomically.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_yaml::Value;

use super::load::parse_str;
use super::{Config, ConfigError};

/// Validates a loaded config as `serve` would and gives back its warnings.
/// The config module cannot build what a config means (it is a leaf), so
/// the caller supplies this: `runtime::check`.
pub type Check<'a> = &'a dyn Fn(Config) -> Result<Vec<String>, ConfigError>;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The text (or a rendered fragment) does not parse as YAML.
    #[error("not valid YAML: {0}")]
    Yaml(String),
    /// A layout this line editor leaves alone rather than risk mangling.
    #[error("line {line}: {message}; make this change by hand")]
    Unsupported { line: usize, message: String },
    /// `remove_*`: nothing matched. `available` lists what is there.
    #[error("no entry with {field} `{value}` under `{key}` (there: {})", names(.available))]
    NotFound {
        key: String,
        field: String,
        value: String,
        available: Vec<String>,
    },
    /// `append_map_entry`: the name is taken.
    #[error("`{key}` already has an entry `{name}`")]
    Exists { key: String, name: String },
    /// A caller's own check, made inside [`edit_file`], refused the change.
    #[error("{0}")]
    Refused(String),
    /// The edited text would not load; nothing was written.
    #[error("the file would not load after this change, so it was left unchanged: {0}")]
    Invalid(String),
    /// The file does not load even before the change; nothing was written.
    #[error("the file does not load as it is, so it was left unchanged: {0}")]
    AlreadyInvalid(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Someone else wrote the file between our read and our write.
    #[error("{0} changed while this command was editing it; nothing was written, run the command again")]
    Conflict(String),
}

fn names(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

fn unsupported(line0: usize, message: impl Into<String>) -> EditError {
    EditError::Unsupported {
        line: line0 + 1,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Lines

/// The text as lines that keep their terminators (`\n`, `\r\n`, or none on a
/// last line without a final newline): concatenating them gives the text
/// back byte for byte.
struct Doc {
    lines: Vec<String>,
    /// What new lines end with: the file's own convention.
    eol: &'static str,
}

fn body(line: &str) -> &str {
    match line.strip_suffix('\n') {
        Some(l) => l.strip_suffix('\r').unwrap_or(l),
        None => line,
    }
}

fn indent_of(body: &str) -> usize {
    body.len() - body.trim_start_matches(' ').len()
}

fn is_blank(body: &str) -> bool {
    body.trim().is_empty()
}

fn is_comment(body: &str) -> bool {
    body.trim_start().starts_with('#')
}

fn is_content(body: &str) -> bool {
    !is_blank(body) && !is_comment(body)
}

/// A block sequence item (`-` then a space or the end of the line) at byte `at`.
fn is_dash(body: &str, at: usize) -> bool {
    let rest = &body[at.min(body.len())..];
    rest == "-" || rest.starts_with("- ") || rest.starts_with("-\t")
}

impl Doc {
    fn new(text: &str) -> Doc {
        Doc {
            lines: text.split_inclusive('\n').map(str::to_string).collect(),
            eol: if text.contains("\r\n") { "\r\n" } else { "\n" },
        }
    }

    fn text(&self) -> String {
        self.lines.concat()
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    fn body(&self, i: usize) -> &str {
        body(&self.lines[i])
    }

    /// Insert lines (given without terminators) before line `at`.
    fn insert(&mut self, at: usize, new: &[String]) {
        if new.is_empty() {
            return;
        }
        let mut rendered: Vec<String> = new.iter().map(|l| format!("{l}{}", self.eol)).collect();
        // Appending after a last line that has no final newline: that line
        // gets one, and the new last line goes without, so the file keeps
        // its (missing) final newline.
        if at == self.lines.len() && at > 0 && !self.lines[at - 1].ends_with('\n') {
            self.lines[at - 1].push_str(self.eol);
            if let Some(last) = rendered.last_mut() {
                last.truncate(last.len() - self.eol.len());
            }
        }
        self.lines.splice(at..at, rendered);
    }

    fn remove(&mut self, start: usize, end: usize) {
        let dropped_final_newline = end == self.lines.len() && end > start && !self.lines[end - 1].ends_with('\n');
        self.lines.drain(start..end);
        if dropped_final_newline && start > 0 {
            let last = &mut self.lines[start - 1];
            let keep = body(last).len();
            last.truncate(keep);
        }
    }

    fn replace_body(&mut self, i: usize, new_body: String) {
        let terminator = self.lines[i][body(&self.lines[i]).len()..].to_string();
        self.lines[i] = new_body + &terminator;
    }

    /// The indentation step the file uses (the smallest positive indent of a
    /// content line), for sections this module has to create. Default 2.
    fn indent_unit(&self) -> usize {
        (0..self.len())
            .map(|i| self.body(i))
            .filter(|b| is_content(b))
            .map(indent_of)
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(2)
            .clamp(1, 8)
    }
}

// ---------------------------------------------------------------------------
// Scanning: quotes, comments, keys, flow lists

/// Byte index of the quote closing the quoted scalar that opens at `open`.
fn closing_quote(s: &str, open: usize) -> Option<usize> {
    let b = s.as_bytes();
    let q = b[open];
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' if q == b'"' => i += 1,
            c if c == q => {
                // `''` inside single quotes is an escaped quote.
                if q == b'\'' && b.get(i + 1) == Some(&b'\'') {
                    i += 1;
                } else {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Where a trailing `# comment` starts in `s` (at the whitespace before the
/// `#`), or `s.len()`. A `#` inside quotes or glued to a word is not one.
fn comment_start(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    let mut token_start = true;
    while i < b.len() {
        match b[i] {
            b'#' if i == 0 || b[i - 1] == b' ' || b[i - 1] == b'\t' => {
                let mut j = i;
                while j > 0 && (b[j - 1] == b' ' || b[j - 1] == b'\t') {
                    j -= 1;
                }
                return j;
            }
            b'"' | b'\'' if token_start => match closing_quote(s, i) {
                Some(close) => {
                    i = close + 1;
                    token_start = false;
                    continue;
                }
                None => return s.len(),
            },
            b' ' | b'\t' | b'[' | b'{' | b',' => token_start = true,
            _ => token_start = false,
        }
        i += 1;
    }
    s.len()
}

/// `key:` at the start of `s`: the key (unquoted) and the byte index just
/// past its colon. `None` if `s` does not start with a mapping key.
fn parse_key(s: &str) -> Option<(String, usize)> {
    let first = *s.as_bytes().first()?;
    if first == b'"' || first == b'\'' {
        let close = closing_quote(s, 0)?;
        let key = serde_yaml::from_str::<String>(&s[..=close]).ok()?;
        let rest = &s[close + 1..];
        let gap = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        let colon = close + 1 + gap;
        let after = &s[colon..];
        return (after.starts_with(':') && (after.len() == 1 || after[1..].starts_with([' ', '\t'])))
            .then(|| (key, colon + 1));
    }
    if matches!(first, b'#' | b'[' | b'{' | b'?' | b'&' | b'*' | b'!' | b'|' | b'>') {
        return None;
    }
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'#' && i > 0 && (b[i - 1] == b' ' || b[i - 1] == b'\t') {
            return None;
        }
        if c == b':' && matches!(b.get(i + 1), None | Some(b' ') | Some(b'\t')) {
            let key = s[..i].trim_end();
            return (!key.is_empty()).then(|| (key.to_string(), i + 1));
        }
    }
    None
}

/// The items of a one-line flow sequence `[a, {b: c}, "d,e"]`, as written.
/// `None` when it does not split cleanly.
fn flow_items(flow: &str) -> Option<Vec<String>> {
    split_flow(flow.strip_prefix('[')?.strip_suffix(']')?)
}

/// The `key: value` items of a one-line flow mapping `{a: 1, b: [x, y]}`.
fn flow_map_items(flow: &str) -> Option<Vec<String>> {
    split_flow(flow.strip_prefix('{')?.strip_suffix('}')?)
}

/// Split the inside of a flow collection at its top-level commas.
fn split_flow(inner: &str) -> Option<Vec<String>> {
    let b = inner.as_bytes();
    let mut items = Vec::new();
    let (mut depth, mut start, mut i, mut token_start) = (0i32, 0usize, 0usize, true);
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' if token_start => {
                i = closing_quote(inner, i)? + 1;
                token_start = false;
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                token_start = true;
            }
            b']' | b'}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
                token_start = false;
            }
            b',' if depth == 0 => {
                items.push(inner[start..i].trim().to_string());
                start = i + 1;
                token_start = true;
            }
            b',' | b' ' | b'\t' | b':' => token_start = true,
            _ => token_start = false,
        }
        i += 1;
    }
    if depth != 0 {
        return None;
    }
    let last = inner[start..].trim();
    if !last.is_empty() {
        items.push(last.to_string());
    }
    if items.iter().any(String::is_empty) {
        return None;
    }
    Some(items)
}

// ---------------------------------------------------------------------------
// Blocks and entries

/// A top-level key's block: its `key:` line and every line up to the next
/// line at column 0 that is not a comment or a `- ` item.
#[derive(Debug, Clone, Copy)]
struct Block {
    key_line: usize,
    end: usize,
    /// Byte index in the key line just past the colon.
    after_colon: usize,
}

impl Block {
    fn region(&self) -> std::ops::Range<usize> {
        self.key_line + 1..self.end
    }
}

/// The value written on the key line itself, and its trailing comment.
struct Inline {
    value: String,
    /// The comment with the whitespace before it (`""` if none).
    comment: String,
}

fn inline(doc: &Doc, b: &Block) -> Inline {
    let rest = &doc.body(b.key_line)[b.after_colon..];
    let c = comment_start(rest);
    Inline {
        value: rest[..c].trim().to_string(),
        comment: rest[c..].to_string(),
    }
}

/// Rewrite the value on the key line, keeping its comment.
fn set_inline(doc: &mut Doc, b: &Block, value: &str) {
    let line = doc.body(b.key_line);
    let comment = inline(doc, b).comment;
    let sep = if value.is_empty() { "" } else { " " };
    let new = format!("{}{sep}{value}{comment}", &line[..b.after_colon]);
    doc.replace_body(b.key_line, new);
}

fn is_null(v: &str) -> bool {
    matches!(v, "~" | "null" | "Null" | "NULL")
}

fn find_block(doc: &Doc, key: &str) -> Result<Option<Block>, EditError> {
    // Column-0 lines other than comments and `- ` items end a block; those
    // that are `key:` also start one.
    let mut roots: Vec<(usize, Option<(String, usize)>)> = Vec::new();
    for i in 0..doc.len() {
        let b = doc.body(i);
        if b.is_empty() || b.starts_with([' ', '\t', '#']) || is_blank(b) || is_dash(b, 0) {
            continue;
        }
        roots.push((i, parse_key(b)));
    }
    let mut found = None;
    for (n, (line, parsed)) in roots.iter().enumerate() {
        if let Some((k, after_colon)) = parsed {
            if k == key {
                if found.is_some() {
                    return Err(unsupported(*line, format!("`{key}` appears twice")));
                }
                found = Some(Block {
                    key_line: *line,
                    end: roots.get(n + 1).map_or(doc.len(), |r| r.0),
                    after_colon: *after_colon,
                });
            }
        }
    }
    Ok(found)
}

/// One entry of a block: a list item or a key of a nested mapping, lines
/// `start..end`. `end` takes in the comment lines right below the entry's
/// last line that are indented deeper than the entry (they are inside it),
/// and nothing after a blank line (that may introduce the next entry).
#[derive(Debug, Clone, Copy)]
struct Entry {
    start: usize,
    end: usize,
}

struct Entries {
    /// Column of the entries' `-` (list) or key (mapping).
    indent: usize,
    seq: bool,
    items: Vec<Entry>,
}

fn entries(doc: &Doc, b: &Block) -> Result<Entries, EditError> {
    let mut indent = None;
    let mut seq = false;
    let mut starts = Vec::new();
    for i in b.region() {
        let line = doc.body(i);
        if !is_content(line) {
            continue;
        }
        if line.starts_with('\t') {
            return Err(unsupported(i, "indented with a tab"));
        }
        let ind = indent_of(line);
        match indent {
            None => {
                indent = Some(ind);
                seq = is_dash(line, ind);
                starts.push(i);
            }
            Some(d) if ind == d => {
                if is_dash(line, ind) != seq {
                    return Err(unsupported(i, "this block mixes list items and keys"));
                }
                starts.push(i);
            }
            Some(d) if ind < d => {
                return Err(unsupported(i, "indented less than the entries above it"));
            }
            Some(_) => {}
        }
    }
    let d = indent.unwrap_or(0);
    let mut items = Vec::with_capacity(starts.len());
    for (n, &start) in starts.iter().enumerate() {
        let limit = starts.get(n + 1).copied().unwrap_or(b.end);
        let last = (start..limit).rev().find(|&i| is_content(doc.body(i))).unwrap_or(start);
        let mut end = last + 1;
        while end < limit && is_comment(doc.body(end)) && indent_of(doc.body(end)) > d {
            end += 1;
        }
        items.push(Entry { start, end });
    }
    Ok(Entries { indent: d, seq, items })
}

/// Where the first entry of an empty block goes: after the key line and any
/// indented comments under it (an "add entries here" note stays on top).
fn empty_insert_at(doc: &Doc, b: &Block) -> usize {
    let mut at = b.key_line + 1;
    for i in b.region() {
        let line = doc.body(i);
        if is_blank(line) {
            continue;
        }
        if is_comment(line) && indent_of(line) > 0 {
            at = i + 1;
        } else {
            break;
        }
    }
    at
}

/// True when every entry after the first is set off from the one before by
/// a blank line (above the comment lines that introduce it, if any): the
/// entries the `provider` and `route` commands add follow suit.
fn blank_separated(doc: &Doc, e: &Entries) -> bool {
    e.items.len() >= 2
        && e.items.windows(2).all(|w| {
            let mut j = w[1].start;
            while j > w[0].end && is_comment(doc.body(j - 1)) {
                j -= 1;
            }
            j > w[0].end && is_blank(doc.body(j - 1))
        })
}

/// The lines to remove for `entry`: its own, plus one blank line when it is
/// set off by blank lines, so that the entries around it keep one blank
/// line between them (between two blank lines: the one below; the last
/// entry, with no blank line below: the one above).
fn span_with_separator(doc: &Doc, entry: Entry, last: bool) -> (usize, usize) {
    let Entry { mut start, mut end } = entry;
    if start > 0 && is_blank(doc.body(start - 1)) {
        if end < doc.len() && is_blank(doc.body(end)) {
            end += 1;
        } else if last {
            start -= 1;
        }
    }
    (start, end)
}

/// The column, relative to the dash, where a list item's content starts
/// (`- name` → 2, `-   name` → 4).
fn dash_offset(line: &str, dash: usize) -> usize {
    let after = &line[dash + 1..];
    let trimmed = after.trim_start_matches(' ');
    if trimmed.is_empty() || trimmed.starts_with(['#', '\t']) {
        2
    } else {
        1 + after.len() - trimmed.len()
    }
}

/// `lines` as one list item: `-` at column `dash`, content at `dash + offset`.
fn render_item(lines: &[&str], dash: usize, offset: usize) -> Vec<String> {
    lines
        .iter()
        .enumerate()
        .map(|(n, l)| {
            if n == 0 {
                format!("{}-{}{l}", " ".repeat(dash), " ".repeat(offset - 1))
            } else if l.is_empty() {
                String::new()
            } else {
                format!("{}{l}", " ".repeat(dash + offset))
            }
        })
        .collect()
}

/// The shape of a top-level key meant to hold a list (or a mapping).
enum Shape {
    Absent,
    /// `key:` with no entries, `key: []`, `key: {}`, `key: ~`.
    Empty(Block),
    Entries(Block, Entries),
    /// A one-line flow list `key: [a, b]`, split into its items.
    Flow(Block, Vec<String>),
}

fn shape(doc: &Doc, key: &str) -> Result<Shape, EditError> {
    let Some(b) = find_block(doc, key)? else {
        return Ok(Shape::Absent);
    };
    let il = inline(doc, &b);
    let v = il.value.as_str();
    if v.is_empty() {
        let e = entries(doc, &b)?;
        return Ok(if e.items.is_empty() {
            Shape::Empty(b)
        } else {
            Shape::Entries(b, e)
        });
    }
    if b.region().any(|i| is_content(doc.body(i))) {
        return Err(unsupported(
            b.key_line,
            format!("`{key}` continues below its first line (a multi-line flow value, or an anchor or tag)"),
        ));
    }
    if v == "[]" || v == "{}" || is_null(v) {
        return Ok(Shape::Empty(b));
    }
    if v.starts_with('[') {
        return match flow_items(v) {
            Some(items) => Ok(Shape::Flow(b, items)),
            None => Err(unsupported(
                b.key_line,
                format!("cannot split the flow list of `{key}`"),
            )),
        };
    }
    Err(unsupported(
        b.key_line,
        format!("`{key}: {v}` is not a block list or mapping this editor can change"),
    ))
}

// ---------------------------------------------------------------------------
// Checking an edit against the parser

/// The document's root mapping (an empty file is an empty mapping).
fn root(text: &str) -> Result<serde_yaml::Mapping, EditError> {
    match serde_yaml::from_str::<Value>(text).map_err(|e| EditError::Yaml(e.to_string()))? {
        Value::Null => Ok(Default::default()),
        Value::Mapping(m) => Ok(m),
        _ => Err(unsupported(0, "the file is not a YAML mapping")),
    }
}

/// The edit must have made exactly the intended change and nothing else.
fn verify(new_text: &str, expected: &serde_yaml::Mapping) -> Result<String, EditError> {
    let got = root(new_text)?;
    if &got != expected {
        return Err(unsupported(
            0,
            "the line edit would change more than intended (an unusual layout)",
        ));
    }
    Ok(new_text.to_string())
}

fn parse_fragment(text: &str) -> Result<Value, EditError> {
    let v: Value = serde_yaml::from_str(text).map_err(|e| EditError::Yaml(format!("{e} in `{text}`")))?;
    if v.is_null() {
        return Err(EditError::Yaml(format!("`{text}` is empty")));
    }
    Ok(v)
}

/// `field` of a mapping as text, for matching (`name: 123` matches "123").
fn field_text(item: &Value, field: &str) -> Option<String> {
    match item.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn lines_of(item: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = item.lines().collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    lines
}

// ---------------------------------------------------------------------------
// Public edits

/// Where a top-level key sits in a text, in 1-based inclusive line numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The `key:` line.
    pub line: usize,
    /// The block's last line that belongs to it (its last entry's last line,
    /// or the key line); comments and blank lines after it are not counted.
    pub last_line: usize,
    /// First and last line of each entry: list items, or nested mapping keys.
    pub entries: Vec<(usize, usize)>,
    /// What is written after `key:` on its own line (comment excluded).
    pub inline: String,
}

/// Find top-level `key` and the entries of its block. `Ok(None)` when absent.
pub fn find_section(text: &str, key: &str) -> Result<Option<Section>, EditError> {
    let doc = Doc::new(text);
    let Some(b) = find_block(&doc, key)? else {
        return Ok(None);
    };
    let il = inline(&doc, &b);
    let e = if il.value.is_empty() {
        entries(&doc, &b)?.items
    } else {
        Vec::new()
    };
    Ok(Some(Section {
        line: b.key_line + 1,
        last_line: e.last().map_or(b.key_line + 1, |x| x.end),
        entries: e.iter().map(|x| (x.start + 1, x.end)).collect(),
        inline: il.value,
    }))
}

/// The line (1-based) a config key path such as `keys[2].key_env` or
/// `providers.openai.api_key` refers to, as far as the first two segments
/// go. For pointing error messages at the file.
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let split = path.find(['.', '[']).unwrap_or(path.len());
    let (top, rest) = path.split_at(split);
    let doc = Doc::new(text);
    let b = find_block(&doc, top).ok()??;
    let e = entries(&doc, &b).ok();
    if let Some(idx) = rest.strip_prefix('[').and_then(|r| r.split(']').next()) {
        let i: usize = idx.parse().ok()?;
        return e
            .and_then(|e| e.items.get(i).map(|x| x.start + 1))
            .or(Some(b.key_line + 1));
    }
    if let Some(name) = rest.strip_prefix('.') {
        let name = name.split(['.', '[']).next().unwrap_or(name);
        let hit = e.and_then(|e| {
            e.items.iter().find_map(|x| {
                let line = doc.body(x.start);
                let key = parse_key(&line[indent_of(line)..])?.0;
                (key == name).then_some(x.start + 1)
            })
        });
        return hit.or(Some(b.key_line + 1));
    }
    Some(b.key_line + 1)
}

/// The values of `field` in the list under top-level `key`, in order (`""`
/// for an item without it). `Ok(None)` when the key is absent or null.
pub fn list_field_values(text: &str, key: &str, field: &str) -> Result<Option<Vec<String>>, EditError> {
    match root(text)?.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Sequence(items)) => Ok(Some(
            items.iter().map(|i| field_text(i, field).unwrap_or_default()).collect(),
        )),
        Some(_) => {
            let line = find_section(text, key)?.map_or(1, |s| s.line);
            Err(EditError::Unsupported {
                line,
                message: format!("`{key}` is not a list"),
            })
        }
    }
}

/// Append `item` (YAML lines, e.g. a block mapping, indented from column 0)
/// as the last entry of the list under top-level `key`, matching the
/// existing items' indentation. An absent, empty (`key: []`) or null section
/// is (re)written as a block list; so is a one-line flow list, item by item.
pub fn append_list_item(text: &str, key: &str, item: &str) -> Result<String, EditError> {
    let lines = lines_of(item);
    let value = parse_fragment(item)?;
    let mut expected = root(text)?;
    match expected.get_mut(key) {
        None | Some(Value::Null) => {
            expected.insert(Value::String(key.into()), Value::Sequence(vec![value]));
        }
        Some(Value::Sequence(items)) => items.push(value),
        Some(_) => {
            let line = find_section(text, key)?.map_or(1, |s| s.line);
            return Err(EditError::Unsupported {
                line,
                message: format!("`{key}` is not a list"),
            });
        }
    }
    let mut doc = Doc::new(text);
    let unit = doc.indent_unit();
    match shape(&doc, key)? {
        Shape::Absent => {
            let mut new = vec![format!("{key}:")];
            new.extend(render_item(&lines, unit, 2));
            doc.insert(doc.len(), &new);
        }
        Shape::Empty(b) => {
            set_inline(&mut doc, &b, "");
            let at = empty_insert_at(&doc, &b);
            doc.insert(at, &render_item(&lines, unit, 2));
        }
        Shape::Entries(b, e) => {
            if !e.seq {
                return Err(unsupported(b.key_line, format!("`{key}` is a mapping, not a list")));
            }
            let last = e.items[e.items.len() - 1];
            let offset = dash_offset(doc.body(last.start), e.indent);
            doc.insert(last.end, &render_item(&lines, e.indent, offset));
        }
        Shape::Flow(b, items) => {
            set_inline(&mut doc, &b, "");
            let mut new: Vec<String> = items.iter().map(|i| format!("{}- {i}", " ".repeat(unit))).collect();
            new.extend(render_item(&lines, unit, 2));
            doc.insert(b.key_line + 1, &new);
        }
    }
    verify(&doc.text(), &expected)
}

/// Insert `item` (as for [`append_list_item`]) into the list under top-level
/// `key` so that it becomes item `index` (0-based): before the item now at
/// `index`, and before the comment lines right above that item (they
/// describe it). `index` equal to the list's length appends.
pub fn insert_list_item(text: &str, key: &str, index: usize, item: &str) -> Result<String, EditError> {
    let count = match root(text)?.get(key) {
        Some(Value::Sequence(items)) => items.len(),
        _ => 0,
    };
    if index >= count {
        if index > count {
            return Err(EditError::Refused(format!(
                "cannot insert at {key}[{index}]: the list has {count} entries"
            )));
        }
        // After the last item, set off by a blank line when the others are.
        let mut doc = Doc::new(text);
        if let Shape::Entries(_, e) = shape(&doc, key)? {
            if e.seq && e.items.len() == count && blank_separated(&doc, &e) {
                let mut expected = root(text)?;
                if let Some(Value::Sequence(items)) = expected.get_mut(key) {
                    items.push(parse_fragment(item)?);
                }
                let last = e.items[count - 1];
                let offset = dash_offset(doc.body(last.start), e.indent);
                let mut new = vec![String::new()];
                new.extend(render_item(&lines_of(item), e.indent, offset));
                doc.insert(last.end, &new);
                return verify(&doc.text(), &expected);
            }
        }
        return append_list_item(text, key, item);
    }
    let lines = lines_of(item);
    let value = parse_fragment(item)?;
    let mut expected = root(text)?;
    if let Some(Value::Sequence(items)) = expected.get_mut(key) {
        items.insert(index, value);
    }
    let mut doc = Doc::new(text);
    let unit = doc.indent_unit();
    match shape(&doc, key)? {
        Shape::Entries(b, e) if e.seq && e.items.len() == count => {
            let target = e.items[index];
            let floor = if index == 0 {
                b.key_line + 1
            } else {
                e.items[index - 1].end
            };
            let mut at = target.start;
            while at > floor && is_comment(doc.body(at - 1)) {
                at -= 1;
            }
            let offset = dash_offset(doc.body(target.start), e.indent);
            let mut new = render_item(&lines, e.indent, offset);
            if index > 0 && blank_separated(&doc, &e) {
                new.push(String::new());
            }
            doc.insert(at, &new);
        }
        Shape::Flow(b, items) if items.len() == count => {
            set_inline(&mut doc, &b, "");
            let mut new: Vec<String> = Vec::new();
            for (i, it) in items.iter().enumerate() {
                if i == index {
                    new.extend(render_item(&lines, unit, 2));
                }
                new.push(format!("{}- {it}", " ".repeat(unit)));
            }
            doc.insert(b.key_line + 1, &new);
        }
        Shape::Entries(b, _) | Shape::Flow(b, _) | Shape::Empty(b) => {
            return Err(unsupported(
                b.key_line,
                format!("cannot match the lines under `{key}` to its {count} entries"),
            ))
        }
        Shape::Absent => return Err(unsupported(0, format!("cannot find the `{key}:` line"))),
    }
    verify(&doc.text(), &expected)
}

/// Remove the item of the list under top-level `key` whose `field` is
/// `value`: its lines and the comment lines indented inside it right below.
/// Comments above it or after a blank line are kept (they may describe the
/// next item or the section). Removing the last item leaves `key: []`, never
/// a bare `key:`, which would read as "no section" (for `keys:` that would
/// switch the gateway to passthrough-auth).
pub fn remove_list_item(text: &str, key: &str, field: &str, value: &str) -> Result<String, EditError> {
    let mut expected = root(text)?;
    let not_found = |available| EditError::NotFound {
        key: key.into(),
        field: field.into(),
        value: value.into(),
        available,
    };
    let items = match expected.get_mut(key) {
        None | Some(Value::Null) => return Err(not_found(Vec::new())),
        Some(Value::Sequence(items)) => items,
        Some(_) => {
            let line = find_section(text, key)?.map_or(1, |s| s.line);
            return Err(EditError::Unsupported {
                line,
                message: format!("`{key}` is not a list"),
            });
        }
    };
    let count = items.len();
    let hits: Vec<usize> = (0..count)
        .filter(|&i| field_text(&items[i], field).as_deref() == Some(value))
        .collect();
    let idx = match hits.as_slice() {
        [] => return Err(not_found(items.iter().filter_map(|i| field_text(i, field)).collect())),
        [one] => *one,
        _ => {
            let line = find_section(text, key)?.map_or(1, |s| s.line);
            return Err(EditError::Unsupported {
                line,
                message: format!("several entries of `{key}` have {field} `{value}`"),
            });
        }
    };
    items.remove(idx);
    remove_list_lines(text, key, idx, count, &expected)
}

/// Remove item `index` (0-based) of the list under top-level `key`, as
/// [`remove_list_item`] does, for lists whose items have no unique field
/// (`routes:` may hold several rules with the same `match`).
pub fn remove_list_item_at(text: &str, key: &str, index: usize) -> Result<String, EditError> {
    let mut expected = root(text)?;
    let items = match expected.get_mut(key) {
        Some(Value::Sequence(items)) if index < items.len() => items,
        Some(Value::Sequence(items)) => {
            return Err(EditError::NotFound {
                key: key.into(),
                field: "index".into(),
                value: index.to_string(),
                available: (0..items.len()).map(|i| i.to_string()).collect(),
            })
        }
        None | Some(Value::Null) => {
            return Err(EditError::NotFound {
                key: key.into(),
                field: "index".into(),
                value: index.to_string(),
                available: Vec::new(),
            })
        }
        Some(_) => {
            let line = find_section(text, key)?.map_or(1, |s| s.line);
            return Err(EditError::Unsupported {
                line,
                message: format!("`{key}` is not a list"),
            });
        }
    };
    let count = items.len();
    items.remove(index);
    remove_list_lines(text, key, index, count, &expected)
}

/// The line work of removing item `idx` of `count` from the list under `key`.
fn remove_list_lines(
    text: &str,
    key: &str,
    idx: usize,
    count: usize,
    expected: &serde_yaml::Mapping,
) -> Result<String, EditError> {
    let mut doc = Doc::new(text);
    match shape(&doc, key)? {
        Shape::Entries(b, e) if e.seq && e.items.len() == count => {
            let (start, end) = span_with_separator(&doc, e.items[idx], idx + 1 == count);
            doc.remove(start, end);
            if count == 1 {
                set_inline(&mut doc, &b, "[]");
            }
        }
        Shape::Flow(b, mut flow) if flow.len() == count => {
            flow.remove(idx);
            set_inline(&mut doc, &b, &format!("[{}]", flow.join(", ")));
        }
        Shape::Entries(b, _) | Shape::Flow(b, _) | Shape::Empty(b) => {
            return Err(unsupported(
                b.key_line,
                format!("cannot match the lines under `{key}` to its {count} entries"),
            ))
        }
        Shape::Absent => return Err(unsupported(0, format!("cannot find the `{key}:` line"))),
    }
    verify(&doc.text(), expected)
}

/// Add `name:` with `body` (YAML mapping lines, indented from column 0) as
/// the last entry of the mapping under top-level `key` (for `providers:`),
/// creating the section if absent. A nested entry is indented like its
/// siblings, its body one indentation step deeper.
pub fn append_map_entry(text: &str, key: &str, name: &str, body: &str) -> Result<String, EditError> {
    let lines = lines_of(body);
    let value = parse_fragment(body)?;
    let name_text = yaml_scalar(name);
    let mut expected = root(text)?;
    let map = match expected.get_mut(key) {
        None | Some(Value::Null) => {
            expected.insert(Value::String(key.into()), Value::Mapping(Default::default()));
            expected.get_mut(key).and_then(Value::as_mapping_mut)
        }
        Some(Value::Mapping(m)) => Some(m),
        Some(_) => None,
    };
    let Some(map) = map else {
        let line = find_section(text, key)?.map_or(1, |s| s.line);
        return Err(EditError::Unsupported {
            line,
            message: format!("`{key}` is not a mapping"),
        });
    };
    if map.contains_key(name) {
        return Err(EditError::Exists {
            key: key.into(),
            name: name.into(),
        });
    }
    map.insert(Value::String(name.into()), value);
    let mut doc = Doc::new(text);
    let unit = doc.indent_unit();
    let render = |at: usize| -> Vec<String> {
        let mut out = vec![format!("{}{name_text}:", " ".repeat(at))];
        out.extend(lines.iter().map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{}{l}", " ".repeat(at + unit))
            }
        }));
        out
    };
    match shape(&doc, key)? {
        Shape::Absent => {
            let mut new = vec![format!("{key}:")];
            new.extend(render(unit));
            doc.insert(doc.len(), &new);
        }
        Shape::Empty(b) => {
            set_inline(&mut doc, &b, "");
            let at = empty_insert_at(&doc, &b);
            doc.insert(at, &render(unit));
        }
        Shape::Entries(b, e) => {
            if e.seq {
                return Err(unsupported(b.key_line, format!("`{key}` is a list, not a mapping")));
            }
            let last = e.items[e.items.len() - 1];
            let mut new = render(e.indent);
            if blank_separated(&doc, &e) {
                new.insert(0, String::new());
            }
            doc.insert(last.end, &new);
        }
        Shape::Flow(b, _) => return Err(unsupported(b.key_line, format!("`{key}` is a list, not a mapping"))),
    }
    verify(&doc.text(), &expected)
}

/// Remove entry `name` (and the comment lines indented inside it right
/// below) from the mapping under top-level `key`. The last one leaves `key: {}`.
pub fn remove_map_entry(text: &str, key: &str, name: &str) -> Result<String, EditError> {
    let mut expected = root(text)?;
    let map = match expected.get_mut(key) {
        Some(Value::Mapping(m)) => m,
        _ => {
            return Err(EditError::NotFound {
                key: key.into(),
                field: "name".into(),
                value: name.into(),
                available: Vec::new(),
            })
        }
    };
    let available: Vec<String> = map.keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    let Some(idx) = available.iter().position(|k| k == name) else {
        return Err(EditError::NotFound {
            key: key.into(),
            field: "name".into(),
            value: name.into(),
            available,
        });
    };
    let count = map.len();
    map.remove(name);
    let mut doc = Doc::new(text);
    match shape(&doc, key)? {
        Shape::Entries(b, e) if !e.seq && e.items.len() == count => {
            let entry = e.items[idx];
            let line = doc.body(entry.start);
            if parse_key(&line[indent_of(line)..]).map(|k| k.0).as_deref() != Some(name) {
                return Err(unsupported(entry.start, format!("expected the entry `{name}` here")));
            }
            let (start, end) = span_with_separator(&doc, entry, idx + 1 == count);
            doc.remove(start, end);
            if count == 1 {
                set_inline(&mut doc, &b, "{}");
            }
        }
        Shape::Entries(b, _) | Shape::Flow(b, _) | Shape::Empty(b) => {
            return Err(unsupported(
                b.key_line,
                format!("cannot match the lines under `{key}` to its {count} entries"),
            ))
        }
        Shape::Absent => return Err(unsupported(0, format!("cannot find the `{key}:` line"))),
    }
    verify(&doc.text(), &expected)
}

/// Set field `field` of entry `name` of the mapping under top-level `key`
/// (e.g. `providers.openai.enabled`) to `value`: a one-line YAML value,
/// already rendered (a scalar such as `false` or `"x"`, or a flow list such
/// as `[a, b]`). Works on block entries (`name:` with the fields below) and
/// on one-line flow entries (`name: {type: x, enabled: false}`). An existing
/// field keeps its place and its comment; a nested value below it (a block
/// list) is replaced, comment lines in it kept. A new field goes after the
/// entry's last field.
pub fn set_map_entry_field(text: &str, key: &str, name: &str, field: &str, value: &str) -> Result<String, EditError> {
    let parsed = parse_fragment(value)?;
    if value.contains('\n') {
        return Err(EditError::Yaml(format!("`{value}` is not a one-line value")));
    }
    let mut expected = root(text)?;
    let not_found = |available| EditError::NotFound {
        key: key.into(),
        field: "name".into(),
        value: name.into(),
        available,
    };
    let map = match expected.get_mut(key) {
        Some(Value::Mapping(m)) => m,
        _ => return Err(not_found(Vec::new())),
    };
    let available: Vec<String> = map.keys().filter_map(|k| k.as_str().map(str::to_string)).collect();
    let count = map.len();
    let Some(entry) = map.get_mut(name) else {
        return Err(not_found(available));
    };
    let Value::Mapping(fields) = entry else {
        let line = locate(text, &format!("{key}.{name}")).unwrap_or(1);
        return Err(EditError::Unsupported {
            line,
            message: format!("`{key}.{name}` is not a mapping"),
        });
    };
    fields.insert(Value::String(field.into()), parsed);

    let mut doc = Doc::new(text);
    let e = match shape(&doc, key)? {
        Shape::Entries(_, e) if !e.seq && e.items.len() == count => e,
        Shape::Entries(b, _) | Shape::Flow(b, _) | Shape::Empty(b) => {
            return Err(unsupported(
                b.key_line,
                format!("cannot match the lines under `{key}` to its {count} entries"),
            ))
        }
        Shape::Absent => return Err(unsupported(0, format!("cannot find the `{key}:` line"))),
    };
    let found = e.items.iter().find_map(|x| {
        let line = doc.body(x.start);
        let ind = indent_of(line);
        let (k, after) = parse_key(&line[ind..])?;
        (k == name).then_some((*x, ind + after))
    });
    let Some((entry, after_colon)) = found else {
        return Err(unsupported(
            e.items[0].start,
            format!("cannot find the line of `{name}`"),
        ));
    };
    let head = Block {
        key_line: entry.start,
        end: entry.end,
        after_colon,
    };
    let il = inline(&doc, &head);
    if il.value.starts_with('{') {
        // A one-line flow entry: rewrite its items.
        if head.region().any(|i| is_content(doc.body(i))) {
            return Err(unsupported(entry.start, format!("`{name}` spans several lines")));
        }
        let mut items = flow_map_items(&il.value)
            .ok_or_else(|| unsupported(entry.start, format!("cannot split the flow mapping of `{name}`")))?;
        let pos = items
            .iter()
            .position(|it| parse_key(it).is_some_and(|(k, _)| k == field));
        let rendered = format!("{}: {value}", yaml_scalar(field));
        match pos {
            Some(p) => items[p] = rendered,
            None => items.push(rendered),
        }
        set_inline(&mut doc, &head, &format!("{{{}}}", items.join(", ")));
        return verify(&doc.text(), &expected);
    }
    if !il.value.is_empty() {
        return Err(unsupported(
            entry.start,
            format!("`{name}: {}` is not a mapping this editor can change", il.value),
        ));
    }
    // A block entry: its fields sit at the indent of its first content line.
    let Some(first) = head.region().find(|&i| is_content(doc.body(i))) else {
        return Err(unsupported(entry.start, format!("`{name}` has no fields")));
    };
    let field_indent = indent_of(doc.body(first));
    let mut hit = None;
    let mut last_content = first;
    for i in head.region() {
        let line = doc.body(i);
        if !is_content(line) {
            continue;
        }
        last_content = i;
        if indent_of(line) == field_indent {
            if let Some((k, after)) = parse_key(&line[field_indent..]) {
                if k == field {
                    hit = Some((i, field_indent + after));
                }
            }
        }
    }
    match hit {
        Some((line, after)) => {
            let fb = Block {
                key_line: line,
                end: head.end,
                after_colon: after,
            };
            // Lines below the field that belong to its value: deeper content.
            let mut drop = Vec::new();
            for i in line + 1..head.end {
                let b = doc.body(i);
                if is_content(b) {
                    if indent_of(b) <= field_indent {
                        break;
                    }
                    drop.push(i);
                }
            }
            set_inline(&mut doc, &fb, value);
            for i in drop.into_iter().rev() {
                doc.remove(i, i + 1);
            }
        }
        None => {
            let new = format!("{}{}: {value}", " ".repeat(field_indent), yaml_scalar(field));
            doc.insert(last_content + 1, &[new]);
        }
    }
    verify(&doc.text(), &expected)
}

/// Set top-level `key` to the scalar `value` (already rendered: quote it as
/// needed, see [`yaml_scalar`]). Replaces the value on the key's line,
/// keeping its comment, or appends `key: value` at the end of the file.
pub fn set_top_level_scalar(text: &str, key: &str, value: &str) -> Result<String, EditError> {
    set_top_level_scalar_after(text, key, value, &[])
}

/// [`set_top_level_scalar`], placing a new `key: value` line right below the
/// first of `anchors` that is a one-line top-level key (e.g. `default_provider`
/// below `listen`), else at the end of the file.
pub fn set_top_level_scalar_after(text: &str, key: &str, value: &str, anchors: &[&str]) -> Result<String, EditError> {
    let parsed = parse_fragment(value)?;
    if value.contains('\n') || matches!(parsed, Value::Mapping(_) | Value::Sequence(_)) {
        return Err(EditError::Yaml(format!("`{value}` is not a one-line scalar")));
    }
    let mut expected = root(text)?;
    expected.insert(Value::String(key.into()), parsed);
    let mut doc = Doc::new(text);
    match find_block(&doc, key)? {
        Some(b) => {
            if let Some(i) = b.region().find(|&i| is_content(doc.body(i))) {
                return Err(unsupported(i, format!("`{key}` holds a nested block, not a scalar")));
            }
            set_inline(&mut doc, &b, value);
        }
        None => {
            let mut at = doc.len();
            for anchor in anchors {
                if let Some(a) = find_block(&doc, anchor)? {
                    if !inline(&doc, &a).value.is_empty() && !a.region().any(|i| is_content(doc.body(i))) {
                        at = a.key_line + 1;
                        break;
                    }
                }
            }
            doc.insert(at, &[format!("{key}: {value}")]);
        }
    }
    verify(&doc.text(), &expected)
}

// ---------------------------------------------------------------------------
// Rendering scalars

/// A double-quoted YAML scalar. JSON string syntax is valid YAML, and a quoted
/// value always reads back as a string (`"0123"` stays text, unlike `0123`).
pub fn yaml_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
}

/// `s` plain when it reads back as the same string, else double-quoted.
/// `alice` stays `alice`; `true`, `123`, `a: b`, `@x` get quotes.
pub fn yaml_scalar(s: &str) -> String {
    let plain_ok = !s.is_empty()
        && s.trim() == s
        && !s.contains(['#', '\n', '\r', '\t', '"', '\''])
        && !s.chars().any(char::is_control)
        && matches!(serde_yaml::from_str::<Value>(s), Ok(Value::String(ref v)) if v == s);
    if plain_ok {
        s.to_string()
    } else {
        yaml_quote(s)
    }
}

// ---------------------------------------------------------------------------
// Validating and writing

/// Load `text` with the process environment and run `check` on it; its
/// warnings when it passes. Failures are [`EditError::Invalid`], naming the
/// key and, where it can be found, its line.
pub fn validate_text(text: &str, check: Check<'_>) -> Result<Vec<String>, EditError> {
    let env = |name: &str| std::env::var(name).ok();
    let describe = |e: ConfigError| {
        EditError::Invalid(match &e {
            ConfigError::Invalid { key, message } => match locate(text, key) {
                Some(line) => format!("{key} (line {line}): {message}"),
                None => e.to_string(),
            },
            _ => e.to_string(),
        })
    };
    let config = parse_str(text, &env).map_err(describe)?;
    check(config).map_err(describe)
}

fn read(path: &Path) -> Result<String, EditError> {
    std::fs::read_to_string(path).map_err(|e| EditError::Io {
        path: path.display().to_string(),
        source: e,
    })
}

/// Validate `new_text` as `serve` would, and only then write it to `path`
/// atomically ([`write_atomic`]).
pub fn write_validated(path: &Path, new_text: &str, check: Check<'_>) -> Result<(), EditError> {
    validate_text(new_text, check)?;
    write_atomic(path, new_text.as_bytes())
}

/// Replace `path` so that a reader (the gateway's reload) sees the old file
/// or the new one, never a part: write a temporary file in the same
/// directory, give it the original's permissions, fsync, rename it over the
/// original, fsync the directory. A symlink is followed and stays a symlink.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EditError> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let io = |e| EditError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let perms = std::fs::metadata(&target).ok().map(|m| m.permissions());
    let (tmp, file) = create_temp(&dir, &target).map_err(io)?;
    let result = fill_and_rename(file, &tmp, &target, bytes, perms);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)?;
    // The rename is durable only once the directory entry is on disk.
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn create_temp(dir: &Path, target: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("config");
    for attempt in 0..64u32 {
        let p = dir.join(format!(".{name}.{}.{attempt}.tmp", std::process::id()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        // Owner-only until the original's permissions are copied: the file
        // may hold literal provider keys.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        match opts.open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "could not create a temporary file next to the config",
    ))
}

fn fill_and_rename(
    mut file: std::fs::File,
    tmp: &Path,
    target: &Path,
    bytes: &[u8],
    perms: Option<std::fs::Permissions>,
) -> std::io::Result<()> {
    file.write_all(bytes)?;
    if let Some(p) = perms {
        file.set_permissions(p)?;
    }
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, target)
}

/// What [`edit_file`] did.
#[derive(Debug)]
pub struct Edited {
    pub before: String,
    pub after: String,
    /// Validation warnings the new file has and the old one did not.
    pub new_warnings: Vec<String>,
}

/// Read `path`, apply `edit` to its text, validate the result as `serve`
/// would and write it atomically. Nothing is written when `edit` fails, when
/// the result does not load ([`EditError::Invalid`], or
/// [`EditError::AlreadyInvalid`] when the file did not load before either),
/// or when the file changed meanwhile ([`EditError::Conflict`]: two edits at
/// once must not silently lose one; the window left is the instant between
/// the re-read and the rename).
pub fn edit_file(
    path: &Path,
    check: Check<'_>,
    edit: impl FnOnce(&str) -> Result<String, EditError>,
) -> Result<Edited, EditError> {
    let before = read(path)?;
    let after = edit(&before)?;
    let old = validate_text(&before, check);
    let new = match validate_text(&after, check) {
        Ok(s) => s,
        Err(EditError::Invalid(why)) => {
            return Err(match old {
                Err(EditError::Invalid(was)) => EditError::AlreadyInvalid(was),
                _ => EditError::Invalid(why),
            })
        }
        Err(e) => return Err(e),
    };
    let old_warnings = old.unwrap_or_default();
    let new_warnings = new.into_iter().filter(|w| !old_warnings.contains(w)).collect();
    if read(path)? != before {
        return Err(EditError::Conflict(path.display().to_string()));
    }
    write_atomic(path, after.as_bytes())?;
    Ok(Edited {
        before,
        after,
        new_warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "name: alice\nteam: platform\nkey_sha256: \"00ff\"\nrate_limit: {rpm: 10}";

    fn append(text: &str) -> String {
        append_list_item(text, "keys", ALICE).unwrap()
    }

    fn remove(text: &str, name: &str) -> String {
        remove_list_item(text, "keys", "name", name).unwrap()
    }

    #[test]
    fn appends_after_the_last_item_matching_its_indentation() {
        let text = "\
listen: 127.0.0.1:1   # main
keys:
  # humans
  - name: bob   # on call
    key_sha256: \"aa\"

  # bots
  - name: ci
    models: [\"claude-*\"]
    rate_limit:
      rpm: 5
    # tpm: 10   (commented out, belongs to ci)

# teams come next
teams: {}
";
        assert_eq!(
            append(text),
            "\
listen: 127.0.0.1:1   # main
keys:
  # humans
  - name: bob   # on call
    key_sha256: \"aa\"

  # bots
  - name: ci
    models: [\"claude-*\"]
    rate_limit:
      rpm: 5
    # tpm: 10   (commented out, belongs to ci)
  - name: alice
    team: platform
    key_sha256: \"00ff\"
    rate_limit: {rpm: 10}

# teams come next
teams: {}
"
        );
    }

    #[test]
    fn appends_with_dash_at_column_zero_and_wide_offsets() {
        let text = "keys:\n- name: bob\n  key_sha256: \"aa\"\nlisten: x\n";
        assert_eq!(
            append(text),
            "keys:\n- name: bob\n  key_sha256: \"aa\"\n- name: alice\n  team: platform\n  key_sha256: \"00ff\"\n  rate_limit: {rpm: 10}\nlisten: x\n"
        );
        let text = "keys:\n    -   name: bob\n        key_sha256: \"aa\"\n";
        let out = append(text);
        assert!(
            out.ends_with("    -   name: alice\n        team: platform\n        key_sha256: \"00ff\"\n        rate_limit: {rpm: 10}\n"),
            "{out}"
        );
    }

    #[test]
    fn appends_after_flow_items() {
        let text = "keys:\n  - {name: bob, key_sha256: \"aa\"}   # bob\n  - {name: 'c, d', key_sha256: \"bb\"}\n";
        assert_eq!(
            append(text),
            format!(
                "{text}  - name: alice\n    team: platform\n    key_sha256: \"00ff\"\n    rate_limit: {{rpm: 10}}\n"
            )
        );
    }

    #[test]
    fn creates_absent_empty_and_null_sections() {
        let item = "  - name: alice\n    team: platform\n    key_sha256: \"00ff\"\n    rate_limit: {rpm: 10}\n";
        assert_eq!(append("listen: x\n"), format!("listen: x\nkeys:\n{item}"));
        assert_eq!(append(""), format!("keys:\n{item}"));
        assert_eq!(append("# only a comment\n"), format!("# only a comment\nkeys:\n{item}"));
        assert_eq!(
            append("keys: []   # none yet\nlisten: x\n"),
            format!("keys:   # none yet\n{item}listen: x\n")
        );
        assert_eq!(append("keys: ~\n"), format!("keys:\n{item}"));
        assert_eq!(
            append("keys:\n  # add developers here\n\nlisten: x\n"),
            format!("keys:\n  # add developers here\n{item}\nlisten: x\n")
        );
        // The file's own indentation step is used for a new section.
        let out = append("providers:\n    a:\n        type: anthropic\n");
        assert!(
            out.ends_with("keys:\n    - name: alice\n      team: platform\n      key_sha256: \"00ff\"\n      rate_limit: {rpm: 10}\n"),
            "{out}"
        );
    }

    #[test]
    fn converts_a_one_line_flow_list_to_block_form() {
        let text = "keys: [{name: bob, key_sha256: \"a,a\"}, {name: ci, key_sha256: bb}]  # two\nteams: {}\n";
        assert_eq!(
            append(text),
            "keys:  # two\n  - {name: bob, key_sha256: \"a,a\"}\n  - {name: ci, key_sha256: bb}\n  - name: alice\n    team: platform\n    key_sha256: \"00ff\"\n    rate_limit: {rpm: 10}\nteams: {}\n"
        );
    }

    #[test]
    fn keeps_crlf_and_a_missing_final_newline() {
        let text = "listen: x\r\nkeys:\r\n  - name: bob\r\n    key_sha256: \"aa\"";
        let out = append(text);
        assert_eq!(
            out,
            "listen: x\r\nkeys:\r\n  - name: bob\r\n    key_sha256: \"aa\"\r\n  - name: alice\r\n    team: platform\r\n    key_sha256: \"00ff\"\r\n    rate_limit: {rpm: 10}"
        );
        assert_eq!(remove(&out, "alice"), text);
        assert_eq!(
            remove("keys:\r\n  - name: bob\r\n  - name: ci\r\n", "bob"),
            "keys:\r\n  - name: ci\r\n"
        );
    }

    #[test]
    fn removes_an_item_with_its_inner_comments_only() {
        let text = "\
keys:
  # humans
  - name: bob   # on call
    key_sha256: \"aa\"
    # rotated in May (inside bob)

  # the CI bot, below, is shared
  - name: ci
    key_sha256: \"bb\"
teams: {}
";
        assert_eq!(
            remove(text, "bob"),
            "\
keys:
  # humans

  # the CI bot, below, is shared
  - name: ci
    key_sha256: \"bb\"
teams: {}
"
        );
        assert_eq!(
            remove(text, "ci"),
            "\
keys:
  # humans
  - name: bob   # on call
    key_sha256: \"aa\"
    # rotated in May (inside bob)

  # the CI bot, below, is shared
teams: {}
"
        );
    }

    #[test]
    fn removing_between_blank_lines_leaves_one() {
        let text = "keys:\n  - name: a\n\n  - name: b\n    team: t\n\n  - name: c\n";
        assert_eq!(remove(text, "b"), "keys:\n  - name: a\n\n  - name: c\n");
        assert_eq!(remove(text, "c"), "keys:\n  - name: a\n\n  - name: b\n    team: t\n");
    }

    #[test]
    fn removing_the_last_item_leaves_an_empty_list() {
        // `keys:` alone would mean "no keys section" (passthrough-auth).
        assert_eq!(
            remove("keys:   # devs\n  - name: a\n    team: t\nlisten: x\n", "a"),
            "keys: []   # devs\nlisten: x\n"
        );
        assert_eq!(remove("keys: [{name: a}]\n", "a"), "keys: []\n");
        let out = remove("listen: x\nkeys:\n  - name: a", "a");
        assert_eq!(out, "listen: x\nkeys: []");
        assert_eq!(root(&out).unwrap()["keys"], Value::Sequence(vec![]));
    }

    #[test]
    fn removes_from_flow_lists_and_nested_items() {
        assert_eq!(
            remove("keys: [{name: a}, {name: 'b'}, {name: c}]  # x\n", "b"),
            "keys: [{name: a}, {name: c}]  # x\n"
        );
        let text = "keys:\n- name: a\n  models:\n  - x\n  budget:\n    usd: 1\n- name: b\nteams: {}\n";
        assert_eq!(remove(text, "a"), "keys:\n- name: b\nteams: {}\n");
        // A name that reads as a number still matches.
        assert_eq!(
            remove("keys:\n  - name: 123\n  - name: b\n", "123"),
            "keys:\n  - name: b\n"
        );
    }

    #[test]
    fn remove_reports_what_is_there() {
        let e = remove_list_item("keys:\n  - name: a\n  - name: b\n", "keys", "name", "zz").unwrap_err();
        match &e {
            EditError::NotFound { available, .. } => assert_eq!(available, &["a", "b"]),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("there: a, b"), "{e}");
        let e = remove_list_item("listen: x\n", "keys", "name", "zz").unwrap_err();
        assert!(matches!(e, EditError::NotFound { ref available, .. } if available.is_empty()));
    }

    #[test]
    fn handles_markers_quoted_keys_and_block_scalars() {
        let text = "---\n# c\n\"keys\":\n  - name: a\n    note: |\n      # not a comment\n      - not an item\n\n  - name: 'b#1'   # c\nlisten: x\n";
        assert_eq!(
            remove(text, "a"),
            "---\n# c\n\"keys\":\n\n  - name: 'b#1'   # c\nlisten: x\n"
        );
        // The last item goes with the blank line that set it off.
        let out = remove(text, "b#1");
        assert_eq!(
            out,
            "---\n# c\n\"keys\":\n  - name: a\n    note: |\n      # not a comment\n      - not an item\nlisten: x\n"
        );
        assert!(append(text).contains("  - name: 'b#1'   # c\n  - name: alice\n"));
    }

    #[test]
    fn scanners_respect_quotes() {
        assert_eq!(comment_start(" \"a # b\"  # c"), 8);
        assert_eq!(comment_start(" 'it''s # x' # y"), 12);
        assert_eq!(comment_start(" a#b"), 4);
        assert_eq!(comment_start(" # only"), 0);
        assert_eq!(
            flow_items("[{a: \"x, y\"}, 'p,q', [1, 2], z]").unwrap(),
            ["{a: \"x, y\"}", "'p,q'", "[1, 2]", "z"]
        );
        assert_eq!(flow_items("[]").unwrap(), Vec::<String>::new());
        assert!(flow_items("[a, {b]").is_none());
        assert_eq!(parse_key("\"a: b\" : 1"), Some(("a: b".to_string(), 8)));
        assert_eq!(parse_key("url: http://x"), Some(("url".to_string(), 4)));
        assert_eq!(parse_key("---"), None);
        assert_eq!(parse_key("a:b"), None);
    }

    /// Random layouts: dash column, content offset, comments and blank lines
    /// between items, nested blocks, CRLF, a missing final newline, sections
    /// before and after.
    fn layout() -> impl proptest::strategy::Strategy<Value = (String, Vec<String>)> {
        use proptest::prelude::*;
        let item = (any::<bool>(), any::<bool>(), any::<bool>(), 0..3usize);
        (
            prop::sample::select(vec![0usize, 2, 4]),
            prop::sample::select(vec![2usize, 4]),
            prop::collection::vec(item, 1..5),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(dash, offset, items, crlf, final_newline, trailer)| {
                let pad = |n: usize| " ".repeat(n);
                let inner = dash + offset;
                let mut lines = vec!["# head".to_string(), "listen: x".into(), "keys:   # devs".into()];
                let mut names = Vec::new();
                for (i, (comment_above, blank_above, nested, inner_comments)) in items.into_iter().enumerate() {
                    let name = format!("k{i}");
                    if blank_above {
                        lines.push(String::new());
                    }
                    if comment_above {
                        lines.push(format!("{}# about {name}", pad(dash)));
                    }
                    lines.push(format!("{}-{}name: {name}   # n", pad(dash), pad(offset - 1)));
                    if nested {
                        lines.push(format!("{}rate_limit:", pad(inner)));
                        lines.push(format!("{}rpm: {i}", pad(inner + 2)));
                    } else {
                        lines.push(format!("{}models: [\"a,b\", 'c']", pad(inner)));
                    }
                    for c in 0..inner_comments {
                        lines.push(format!("{}# inside {name} {c}", pad(inner)));
                    }
                    names.push(name);
                }
                if trailer {
                    lines.extend(["".into(), "# next".into(), "teams: {}".into()]);
                }
                let eol = if crlf { "\r\n" } else { "\n" };
                let mut text = lines.join(eol);
                if final_newline {
                    text.push_str(eol);
                }
                (text, names)
            })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { failure_persistence: None, ..Default::default() })]
        #[test]
        fn append_then_remove_gives_back_the_same_bytes((text, names) in layout()) {
            let added = append(&text);
            proptest::prop_assert_eq!(remove(&added, "alice"), text.clone());
            for name in &names {
                let out = remove(&text, name);
                let left = list_field_values(&out, "keys", "name").unwrap().unwrap();
                proptest::prop_assert_eq!(left.len(), names.len() - 1);
                proptest::prop_assert_eq!(out.contains("\r\n"), text.contains("\r\n"));
            }
        }
    }

    #[test]
    fn refuses_shapes_it_cannot_edit_safely() {
        let cases = [
            "keys: [\n  {name: a}\n]\n",
            "keys: &k\n  - name: a\n",
            "keys:\n  - name: a\n - name: b\n",
            "keys:\n  - name: a\n  name: b\n",
            "keys: 5\n",
        ];
        for text in cases {
            let e = append_list_item(text, "keys", ALICE);
            assert!(
                matches!(e, Err(EditError::Unsupported { .. } | EditError::Yaml(_))),
                "{text}: {e:?}"
            );
        }
        let e = append_list_item("keys: [\n  {name: a}\n]\n", "keys", ALICE).unwrap_err();
        assert!(e.to_string().starts_with("line 1:"), "{e}");
        assert!(matches!(
            append_list_item("a: [\n", "keys", ALICE),
            Err(EditError::Yaml(_))
        ));
        let e = remove_list_item("keys:\n  - name: a\n  - name: a\n", "keys", "name", "a").unwrap_err();
        assert!(e.to_string().contains("several"), "{e}");
    }

    #[test]
    fn finds_sections_and_locates_paths() {
        let text = "# top\nlisten: x\nproviders:\n  a:\n    type: anthropic\n  b: {type: openai}\nkeys:\n- name: a\n  team: t\n# between\n- name: b\n";
        let s = find_section(text, "keys").unwrap().unwrap();
        assert_eq!(
            s,
            Section {
                line: 7,
                last_line: 11,
                entries: vec![(8, 9), (11, 11)],
                inline: String::new()
            }
        );
        assert_eq!(
            find_section(text, "providers").unwrap().unwrap().entries,
            vec![(4, 5), (6, 6)]
        );
        assert!(find_section(text, "routes").unwrap().is_none());
        assert_eq!(locate(text, "keys[1].key_env"), Some(11));
        assert_eq!(locate(text, "providers.b.api_key"), Some(6));
        assert_eq!(locate(text, "providers.zz"), Some(3));
        assert_eq!(locate(text, "listen"), Some(2));
        assert_eq!(locate(text, "routes[0]"), None);
    }

    #[test]
    fn sets_top_level_scalars_keeping_comments() {
        let text = "listen: x\ndefault_provider: a   # the usual\nproviders: {}\n";
        assert_eq!(
            set_top_level_scalar(text, "default_provider", "b").unwrap(),
            "listen: x\ndefault_provider: b   # the usual\nproviders: {}\n"
        );
        assert_eq!(
            set_top_level_scalar("listen: x", "default_provider", "\"1\"").unwrap(),
            "listen: x\ndefault_provider: \"1\""
        );
        assert_eq!(
            set_top_level_scalar("timeout:\nlisten: x\n", "timeout", "5s").unwrap(),
            "timeout: 5s\nlisten: x\n"
        );
        assert!(set_top_level_scalar("providers:\n  a: {}\n", "providers", "x").is_err());
        assert!(set_top_level_scalar("a: 1\n", "a", "[1]").is_err());
    }

    #[test]
    fn map_entries_append_and_remove() {
        let text =
            "providers:\n  # main\n  anthropic:\n    type: anthropic   # keep\n\n  b: {type: openai}\nroutes: []\n";
        let out = append_map_entry(
            text,
            "providers",
            "oai",
            "type: openai\napi_key_env_var: OPENAI_API_KEY",
        )
        .unwrap();
        assert_eq!(
            out,
            "providers:\n  # main\n  anthropic:\n    type: anthropic   # keep\n\n  b: {type: openai}\n\n  oai:\n    type: openai\n    api_key_env_var: OPENAI_API_KEY\nroutes: []\n"
        );
        assert_eq!(remove_map_entry(&out, "providers", "oai").unwrap(), text);
        assert_eq!(
            remove_map_entry(text, "providers", "anthropic").unwrap(),
            "providers:\n  # main\n\n  b: {type: openai}\nroutes: []\n"
        );
        assert_eq!(
            remove_map_entry("providers:\n  a: {type: x}\n", "providers", "a").unwrap(),
            "providers: {}\n"
        );
        assert_eq!(
            append_map_entry("listen: x\n", "providers", "a", "type: anthropic").unwrap(),
            "listen: x\nproviders:\n  a:\n    type: anthropic\n"
        );
        assert!(matches!(
            append_map_entry(text, "providers", "b", "type: x"),
            Err(EditError::Exists { .. })
        ));
        assert!(matches!(
            remove_map_entry(text, "providers", "zz"),
            Err(EditError::NotFound { ref available, .. }) if available == &["anthropic", "b"]
        ));
    }

    #[test]
    fn inserts_list_items_before_an_item_and_its_comments() {
        let text = "routes:\n  - match: a\n    provider: x\n\n  # the catch-all\n  - match: \"*\"   # last\n    provider: y\nkeys: []\n";
        let item = "match: \"b*\"\nprovider: z";
        // Items set off by blank lines: so is the new one.
        let added = insert_list_item(text, "routes", 1, item).unwrap();
        assert_eq!(
            added,
            "routes:\n  - match: a\n    provider: x\n\n  - match: \"b*\"\n    provider: z\n\n  # the catch-all\n  - match: \"*\"   # last\n    provider: y\nkeys: []\n"
        );
        assert_eq!(remove_list_item_at(&added, "routes", 1).unwrap(), text);
        let appended = insert_list_item(text, "routes", 2, item).unwrap();
        assert_eq!(
            appended,
            "routes:\n  - match: a\n    provider: x\n\n  # the catch-all\n  - match: \"*\"   # last\n    provider: y\n\n  - match: \"b*\"\n    provider: z\nkeys: []\n"
        );
        assert_eq!(remove_list_item_at(&appended, "routes", 2).unwrap(), text);
        let tight = "routes:\n  - {match: a, provider: x}\n  - {match: '*', provider: y}\n";
        assert_eq!(
            insert_list_item(tight, "routes", 1, "{match: b, provider: z}").unwrap(),
            "routes:\n  - {match: a, provider: x}\n  - {match: b, provider: z}\n  - {match: '*', provider: y}\n"
        );
        assert_eq!(
            insert_list_item(text, "routes", 0, item).unwrap(),
            "routes:\n  - match: \"b*\"\n    provider: z\n  - match: a\n    provider: x\n\n  # the catch-all\n  - match: \"*\"   # last\n    provider: y\nkeys: []\n"
        );
        // At the length of a list not set off by blank lines: an append.
        assert_eq!(
            insert_list_item(tight, "routes", 2, item).unwrap(),
            append_list_item(tight, "routes", item).unwrap()
        );
        assert!(insert_list_item(text, "routes", 3, item).is_err());
        // A one-line flow list becomes a block list.
        assert_eq!(
            insert_list_item(
                "routes: [{match: a, provider: x}, {match: '*', provider: y}]\n",
                "routes",
                1,
                item
            )
            .unwrap(),
            "routes:\n  - {match: a, provider: x}\n  - match: \"b*\"\n    provider: z\n  - {match: '*', provider: y}\n"
        );
        // Into an empty or absent list.
        assert_eq!(
            insert_list_item("routes: []\n", "routes", 0, item).unwrap(),
            "routes:\n  - match: \"b*\"\n    provider: z\n"
        );
    }

    #[test]
    fn removes_list_items_by_index() {
        let text = "routes:\n  - {match: a, provider: x}\n  # second\n  - {match: a, provider: y}   # dup\n";
        assert_eq!(
            remove_list_item_at(text, "routes", 1).unwrap(),
            "routes:\n  - {match: a, provider: x}\n  # second\n"
        );
        assert_eq!(
            remove_list_item_at(text, "routes", 0).unwrap(),
            "routes:\n  # second\n  - {match: a, provider: y}   # dup\n"
        );
        assert!(matches!(
            remove_list_item_at(text, "routes", 2),
            Err(EditError::NotFound { ref available, .. }) if available == &["0", "1"]
        ));
        assert!(matches!(
            remove_list_item("routes:\n  - {match: a}\n  - {match: a}\n", "routes", "match", "a"),
            Err(EditError::Unsupported { .. })
        ));
    }

    #[test]
    fn sets_fields_of_block_and_flow_map_entries() {
        let text = "\
providers:
  # main
  anthropic:   # the default
    type: anthropic
    enabled: true   # keep me
    models:
      # the big one
      - claude-opus-4-8
      - claude-sonnet-4-5
    priority: 1

  oai: {type: openai, enabled: true}   # flow
  bare: {type: ollama}
routes: []
";
        let out = set_map_entry_field(text, "providers", "anthropic", "enabled", "false").unwrap();
        assert_eq!(
            out,
            text.replace("enabled: true   # keep me", "enabled: false   # keep me")
        );
        let out = set_map_entry_field(text, "providers", "anthropic", "models", "[a, \"b:c\"]").unwrap();
        assert_eq!(
            out,
            text.replace(
                "    models:\n      # the big one\n      - claude-opus-4-8\n      - claude-sonnet-4-5\n",
                "    models: [a, \"b:c\"]\n      # the big one\n"
            )
        );
        let out = set_map_entry_field(text, "providers", "anthropic", "api_base", "\"http://x\"").unwrap();
        assert_eq!(
            out,
            text.replace("    priority: 1\n", "    priority: 1\n    api_base: \"http://x\"\n")
        );
        let out = set_map_entry_field(text, "providers", "oai", "enabled", "false").unwrap();
        assert_eq!(
            out,
            text.replace(
                "oai: {type: openai, enabled: true}   # flow",
                "oai: {type: openai, enabled: false}   # flow"
            )
        );
        let out = set_map_entry_field(text, "providers", "bare", "enabled", "false").unwrap();
        assert_eq!(
            out,
            text.replace("bare: {type: ollama}", "bare: {type: ollama, enabled: false}")
        );
        let out = set_map_entry_field(text, "providers", "bare", "models", "[\"x, y\", z]").unwrap();
        assert_eq!(
            out,
            text.replace("bare: {type: ollama}", "bare: {type: ollama, models: [\"x, y\", z]}")
        );
        assert!(matches!(
            set_map_entry_field(text, "providers", "zz", "enabled", "false"),
            Err(EditError::NotFound { ref available, .. }) if available == &["anthropic", "oai", "bare"]
        ));
        assert!(set_map_entry_field(
            "providers:\n  a: {type: x,\n    enabled: true}\n",
            "providers",
            "a",
            "enabled",
            "false"
        )
        .is_err());
        assert!(set_map_entry_field(text, "providers", "oai", "enabled", "a\nb").is_err());
    }

    #[test]
    fn a_new_top_level_scalar_can_follow_an_anchor() {
        let text = "# head\nlisten: x   # here\nadmin_listen: y\nproviders:\n  a: {type: anthropic}\n";
        assert_eq!(
            set_top_level_scalar_after(text, "default_provider", "a", &["listen"]).unwrap(),
            "# head\nlisten: x   # here\ndefault_provider: a\nadmin_listen: y\nproviders:\n  a: {type: anthropic}\n"
        );
        // An anchor holding a block is not a place for a scalar: the end is.
        assert_eq!(
            set_top_level_scalar_after(text, "default_provider", "a", &["providers"]).unwrap(),
            format!("{text}default_provider: a\n")
        );
        assert_eq!(
            set_top_level_scalar_after("listen: x", "default_provider", "a", &["listen"]).unwrap(),
            "listen: x\ndefault_provider: a"
        );
    }

    #[test]
    fn scalars_quote_only_when_needed() {
        assert_eq!(yaml_scalar("alice"), "alice");
        assert_eq!(yaml_scalar("a.b@c-d_e"), "a.b@c-d_e");
        for s in [
            "true", "123", "1e3", "null", "~", "@x", "a: b", "a #b", "-", " x", "", "0x1f", ".inf",
        ] {
            let q = yaml_scalar(s);
            assert_eq!(serde_yaml::from_str::<String>(&q).unwrap(), s, "{s} → {q}");
            assert!(q.starts_with('"'), "{s} → {q}");
        }
        assert_eq!(yaml_quote("a\"b\\c\n"), r#""a\"b\\c\n""#);
        assert_eq!(serde_yaml::from_str::<String>(&yaml_quote("é\u{1}")).unwrap(), "é\u{1}");
    }

    #[test]
    fn a_hex_digest_is_always_quoted() {
        // An all-digit sha256 would otherwise read as a number.
        let digits = "1".repeat(64);
        let item = format!("name: n\nkey_sha256: {}", yaml_quote(&digits));
        let out = append_list_item("", "keys", &item).unwrap();
        assert_eq!(root(&out).unwrap()["keys"][0]["key_sha256"], Value::String(digits));
    }

    #[cfg(unix)]
    #[test]
    fn write_atomic_keeps_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.yaml");
        let link = dir.path().join("modelgate.yaml");
        std::fs::write(&real, "a: 1\n").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"a: 2\n").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "a: 2\n");
    }
}
