//! The policy file walker: TOML with spans in, [`Policy`] or every error out.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Action, EVERY, Loc, Policy, PolicyError, PolicyErrors, Rule, Segment, Targets};
use crate::inventory::Inventory;
use crate::ports::{PortSet, PortSpec};

pub(super) type Val<'i> = Spanned<DeValue<'i>>;

/// Collects errors with their places while the walk goes on.
pub(super) struct Ctx<'a> {
    path: &'a str,
    text: &'a str,
    errors: Vec<PolicyError>,
}

impl Ctx<'_> {
    pub(super) fn loc(&self, offset: usize) -> Loc {
        let (line, col) = crate::line_col(self.text, offset);
        Loc { line, col }
    }

    pub(super) fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        let loc = self.loc(span.start);
        self.errors.push(PolicyError {
            path: self.path.to_string(),
            loc,
            message: message.into(),
        });
    }
}

pub(super) fn parse(
    path: &str,
    text: &str,
    inventory: Option<&Inventory>,
) -> Result<Policy, PolicyErrors> {
    let mut cx = Ctx {
        path,
        text,
        errors: Vec::new(),
    };
    let (doc, syntax) = DeTable::parse_recoverable(text);
    for e in &syntax {
        let span = e.span().unwrap_or(0..0);
        if let Some(message) = syntax_message(text, &span, e.message()) {
            cx.err(span, message);
        }
    }
    let mut sections: BTreeMap<&str, &Val<'_>> = BTreeMap::new();
    for (k, v) in doc.get_ref() {
        let key: &str = k.get_ref();
        match key {
            "segments" | "allow" | "deny" | "test" => {
                sections.insert(key, v);
            }
            other => cx.err(
                k.span(),
                format!(
                    "unknown key `{other}`: a policy has only `segments`, `allow`, `deny` and `test`"
                ),
            ),
        }
    }
    let segments = sections
        .get("segments")
        .map(|v| super::segments::parse_segments(&mut cx, v))
        .unwrap_or_default();
    let mut rules = Vec::new();
    for action in [Action::Allow, Action::Deny] {
        let Some(v) = sections.get(action.as_str()) else {
            continue;
        };
        for item in array_of_tables(&mut cx, v, action.as_str()) {
            if let Some(rule) = parse_rule(&mut cx, action, item, &segments) {
                rules.push(rule);
            }
        }
    }
    rules.sort_by_key(|r| r.loc);
    let mut tests = Vec::new();
    if let Some(v) = sections.get("test") {
        for item in array_of_tables(&mut cx, v, "test") {
            if let Some(t) = super::cases::parse_test(&mut cx, item, &segments, inventory) {
                tests.push(t);
            }
        }
    }
    if cx.errors.is_empty() {
        Ok(Policy {
            path: path.to_string(),
            segments,
            rules,
            tests,
        })
    } else {
        let mut errors = cx.errors;
        errors.sort();
        errors.dedup();
        Err(PolicyErrors(errors))
    }
}

/// TOML's own messages are good, except that a repeated `[segments.NAME]`
/// header reads as a generic duplicate key; say what it means, and drop the
/// follow-on errors inside the repeated table. `None` means "skip".
fn syntax_message(text: &str, span: &Range<usize>, message: &str) -> Option<String> {
    let message = message.trim_end().replace('\n', " ");
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    // The nearest table header at or above the error.
    let header = text[..line_start]
        .lines()
        .rev()
        .chain(std::iter::once(""))
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .unwrap_or("");
    let own_line = text[line_start..].lines().next().unwrap_or("").trim();
    if !message.contains("duplicate") {
        return Some(message);
    }
    if own_line.starts_with("[segments.") {
        let name = own_line
            .trim_start_matches("[segments.")
            .trim_end_matches(']')
            .trim();
        return Some(format!(
            "duplicate segment name `{name}`: each segment is defined once"
        ));
    }
    if header.starts_with("[segments.") {
        return None;
    }
    let key = text.get(span.clone()).unwrap_or("").trim();
    if header == "[segments]" && !key.is_empty() {
        return Some(format!(
            "duplicate segment name `{key}`: each segment is defined once"
        ));
    }
    if key.is_empty() {
        Some(message)
    } else {
        Some(format!("{message} `{key}`"))
    }
}

/// The keys of a table, with an error for each key not in `known`.
pub(super) fn fields<'t, 'i>(
    cx: &mut Ctx<'_>,
    table: &'t DeTable<'i>,
    what: &str,
    known: &[&str],
) -> BTreeMap<&'t str, &'t Val<'i>> {
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let key: &str = k.get_ref();
        if known.contains(&key) {
            out.insert(key, v);
        } else {
            let expected: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            cx.err(
                k.span(),
                format!(
                    "unknown key `{key}` in {what}: expected {}",
                    expected.join(", ")
                ),
            );
        }
    }
    out
}

pub(super) fn array_of_tables<'t, 'i>(
    cx: &mut Ctx<'_>,
    v: &'t Val<'i>,
    name: &str,
) -> Vec<(&'t DeTable<'i>, Range<usize>)> {
    let DeValue::Array(items) = v.get_ref() else {
        cx.err(
            v.span(),
            format!("`{name}` must be an array of tables: write `[[{name}]]`"),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items.iter() {
        match item.get_ref() {
            DeValue::Table(t) => out.push((t, item.span())),
            other => cx.err(
                item.span(),
                format!(
                    "each `{name}` entry must be a table, not {}",
                    an(other.type_str())
                ),
            ),
        }
    }
    out
}

/// A string, or an array of strings, with each string's span.
pub(super) fn strings(
    cx: &mut Ctx<'_>,
    v: &Val<'_>,
    what: &str,
) -> Option<Vec<(String, Range<usize>)>> {
    match v.get_ref() {
        DeValue::String(s) => Some(vec![(s.to_string(), v.span())]),
        DeValue::Array(items) => {
            let mut out = Vec::new();
            let mut ok = true;
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => out.push((s.to_string(), item.span())),
                    other => {
                        cx.err(
                            item.span(),
                            format!("{what}: expected a string, found {}", an(other.type_str())),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        other => {
            cx.err(
                v.span(),
                format!(
                    "{what} must be a string or a list of strings, not {}",
                    an(other.type_str())
                ),
            );
            None
        }
    }
}

fn parse_rule(
    cx: &mut Ctx<'_>,
    action: Action,
    (table, span): (&DeTable<'_>, Range<usize>),
    segments: &BTreeMap<String, Segment>,
) -> Option<Rule> {
    let what = format!("[[{}]]", action.as_str());
    let f = fields(cx, table, &what, &["from", "to", "ports", "description"]);
    let from = required(cx, &f, "from", &what, &span).and_then(|v| targets(cx, v, segments));
    let to = required(cx, &f, "to", &what, &span).and_then(|v| targets(cx, v, segments));
    let specs = required(cx, &f, "ports", &what, &span).and_then(|v| ports(cx, v));
    let description = optional_string(cx, &f, "description");
    let (from, to, specs) = (from?, to?, specs?);
    let ports = PortSet::from_specs(&specs);
    Some(Rule {
        action,
        from,
        to,
        specs,
        ports,
        description,
        loc: cx.loc(span.start),
    })
}

pub(super) fn required<'t, 'i>(
    cx: &mut Ctx<'_>,
    f: &BTreeMap<&str, &'t Val<'i>>,
    key: &str,
    what: &str,
    span: &Range<usize>,
) -> Option<&'t Val<'i>> {
    let v = f.get(key).copied();
    if v.is_none() {
        cx.err(span.clone(), format!("{what} is missing `{key}`"));
    }
    v
}

fn targets(cx: &mut Ctx<'_>, v: &Val<'_>, segments: &BTreeMap<String, Segment>) -> Option<Targets> {
    let names = strings(cx, v, "a rule's `from`/`to`")?;
    if names.is_empty() {
        cx.err(
            v.span(),
            "a rule's `from`/`to` must name at least one segment, or \"*\" for every node",
        );
        return None;
    }
    if names.iter().any(|(n, _)| n == EVERY) {
        if names.len() > 1 {
            cx.err(
                v.span(),
                "\"*\" already means every node: do not combine it with segment names",
            );
            return None;
        }
        return Some(Targets::Every);
    }
    let mut ok = true;
    let mut out = Vec::new();
    for (name, span) in names {
        if !segments.contains_key(&name) {
            let hint = closest(&name, segments.keys())
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            cx.err(span, format!("unknown segment `{name}`{hint}"));
            ok = false;
        }
        out.push(name);
    }
    out.sort();
    out.dedup();
    ok.then_some(Targets::Segments(out))
}

/// The known name nearest to a typo, if it is close enough to be one.
fn closest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    known
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn ports(cx: &mut Ctx<'_>, v: &Val<'_>) -> Option<Vec<PortSpec>> {
    let items = strings(cx, v, "`ports`")?;
    if items.is_empty() {
        cx.err(
            v.span(),
            "`ports` must not be empty: list what the rule covers, e.g. [\"tcp/443\"], or [\"any\"]",
        );
        return None;
    }
    let mut ok = true;
    let mut out = Vec::new();
    for (s, span) in items {
        match s.parse::<PortSpec>() {
            Ok(p) => out.push(p),
            Err(e) => {
                cx.err(span, format!("invalid port {s:?}: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// "a string", "an integer", "an array".
pub(super) fn an(type_name: &str) -> String {
    let article = if type_name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {type_name}")
}

/// An optional free-text field.
pub(super) fn optional_string(
    cx: &mut Ctx<'_>,
    f: &BTreeMap<&str, &Val<'_>>,
    key: &str,
) -> Option<String> {
    let v = f.get(key)?;
    match v.get_ref() {
        DeValue::String(s) => Some(s.to_string()),
        other => {
            cx.err(
                v.span(),
                format!("`{key}` must be a string, not {}", an(other.type_str())),
            );
            None
        }
    }
}
