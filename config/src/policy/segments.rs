//! `[segments.NAME]` tables: `match` and `exclude` label selectors.

use std::collections::BTreeMap;

use toml::de::DeValue;

use super::parse::{Ctx, Val, fields, strings};
use super::{Segment, Selector};
use crate::identity::validate_label;

fn segment_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub(super) fn parse_segments(cx: &mut Ctx<'_>, v: &Val<'_>) -> BTreeMap<String, Segment> {
    let DeValue::Table(table) = v.get_ref() else {
        cx.err(
            v.span(),
            "`segments` must be a table: write `[segments.NAME]`",
        );
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for (k, sv) in table {
        let name: &str = k.get_ref();
        if !segment_name_ok(name) {
            cx.err(
                k.span(),
                format!(
                    "invalid segment name `{name}`: use letters, digits, '-', '_' or '.', starting with a letter or digit"
                ),
            );
            continue;
        }
        let DeValue::Table(st) = sv.get_ref() else {
            cx.err(
                sv.span(),
                format!("segment `{name}` must be a table with a `match` selector"),
            );
            continue;
        };
        let what = format!("segment `{name}`");
        let f = fields(cx, st, &what, &["match", "exclude"]);
        let matches = match f.get("match") {
            Some(m) => selector(cx, m, &format!("`match` of {what}")),
            None => {
                cx.err(
                    k.span(),
                    format!("{what} has no `match`: add e.g. match = {{ role = \"{name}\" }}"),
                );
                None
            }
        };
        let exclude = match f.get("exclude") {
            Some(e) => selector(cx, e, &format!("`exclude` of {what}")),
            None => Some(Selector::new()),
        };
        if let (Some(matches), Some(exclude)) = (matches, exclude) {
            let loc = cx.loc(k.span().start);
            out.insert(
                name.to_string(),
                Segment {
                    name: name.to_string(),
                    matches,
                    exclude,
                    loc,
                },
            );
        }
    }
    out
}

/// `{ key = "value", key2 = ["a", "b"] }`.
fn selector(cx: &mut Ctx<'_>, v: &Val<'_>, what: &str) -> Option<Selector> {
    let DeValue::Table(t) = v.get_ref() else {
        cx.err(
            v.span(),
            format!("{what} must be a table of labels, e.g. {{ role = \"web\" }}"),
        );
        return None;
    };
    let mut out = Selector::new();
    let mut ok = true;
    for (k, lv) in t {
        let key: &str = k.get_ref();
        let values = match strings(cx, lv, &format!("label `{key}` in {what}")) {
            Some(vals) if vals.is_empty() => {
                cx.err(
                    lv.span(),
                    format!("label `{key}` in {what} lists no values"),
                );
                None
            }
            other => other,
        };
        let Some(values) = values else {
            ok = false;
            continue;
        };
        let mut vals = Vec::new();
        for (val, span) in values {
            if let Err(e) = validate_label(key, &val) {
                cx.err(span, e.to_string());
                ok = false;
            }
            vals.push(val);
        }
        vals.sort();
        vals.dedup();
        out.insert(key.to_string(), vals);
    }
    ok.then_some(out)
}
