//! `[[test]]` cases: two endpoints (node names or label tables), one flow,
//! and the expected verdict.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::parse::{Ctx, Val, an, fields, optional_string, required};
use super::{Endpoint, Segment, TestCase, Verdict};
use crate::identity::{Labels, NodeName, validate_label};
use crate::inventory::Inventory;
use crate::ports::{PortSpec, Proto};

pub(super) fn parse_test(
    cx: &mut Ctx<'_>,
    (table, span): (&DeTable<'_>, Range<usize>),
    segments: &BTreeMap<String, Segment>,
    inventory: Option<&Inventory>,
) -> Option<TestCase> {
    let what = "[[test]]";
    let f = fields(cx, table, what, &["name", "from", "to", "port", "expect"]);
    let name = optional_string(cx, &f, "name");
    let from =
        required(cx, &f, "from", what, &span).and_then(|v| endpoint(cx, v, segments, inventory));
    let to = required(cx, &f, "to", what, &span).and_then(|v| endpoint(cx, v, segments, inventory));
    let port = required(cx, &f, "port", what, &span).and_then(|v| test_port(cx, v));
    let expect = required(cx, &f, "expect", what, &span).and_then(|v| match v.get_ref() {
        DeValue::String(s) if s == "allow" => Some(Verdict::Allow),
        DeValue::String(s) if s == "deny" => Some(Verdict::Deny),
        _ => {
            cx.err(v.span(), "`expect` must be \"allow\" or \"deny\"");
            None
        }
    });
    Some(TestCase {
        name,
        from: from?,
        to: to?,
        port: port?,
        expect: expect?,
        loc: cx.loc(span.start),
    })
}

fn endpoint(
    cx: &mut Ctx<'_>,
    v: &Val<'_>,
    segments: &BTreeMap<String, Segment>,
    inventory: Option<&Inventory>,
) -> Option<Endpoint> {
    match v.get_ref() {
        DeValue::String(s) => {
            let name = match NodeName::new(s.to_string()) {
                Ok(n) => n,
                Err(e) => {
                    cx.err(v.span(), e.to_string());
                    return None;
                }
            };
            if let Some(inv) = inventory
                && inv.node(name.as_str()).is_none()
            {
                {
                    let hint = if segments.contains_key(name.as_str()) {
                        format!(
                            " (`{name}` is a segment; a test endpoint is a node name or a table of labels)"
                        )
                    } else {
                        String::new()
                    };
                    cx.err(
                        v.span(),
                        format!("unknown node `{name}`: not in the inventory{hint}"),
                    );
                    return None;
                }
            }
            Some(Endpoint::Node(name))
        }
        DeValue::Table(t) => {
            let mut labels = Labels::new();
            let mut ok = true;
            for (k, lv) in t {
                let key: &str = k.get_ref();
                match lv.get_ref() {
                    DeValue::String(val) => match validate_label(key, val) {
                        Ok(()) => {
                            labels.insert(key.to_string(), val.to_string());
                        }
                        Err(e) => {
                            cx.err(lv.span(), e.to_string());
                            ok = false;
                        }
                    },
                    other => {
                        cx.err(
                            lv.span(),
                            format!(
                                "label `{key}` of a test endpoint must be one string, not {}",
                                an(other.type_str())
                            ),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(Endpoint::Labels(labels))
        }
        other => {
            cx.err(
                v.span(),
                format!(
                    "a test endpoint is a node name or a table of labels, not {}",
                    an(other.type_str())
                ),
            );
            None
        }
    }
}

/// A test probes one flow: one TCP/UDP port, or ICMP / other.
fn test_port(cx: &mut Ctx<'_>, v: &Val<'_>) -> Option<PortSpec> {
    let DeValue::String(s) = v.get_ref() else {
        cx.err(v.span(), "`port` must be a string such as \"tcp/5432\"");
        return None;
    };
    match s.parse::<PortSpec>() {
        Ok(p @ PortSpec::Proto(Proto::Icmp | Proto::Other, None)) => Some(p),
        Ok(p @ PortSpec::Proto(Proto::Tcp | Proto::Udp, Some((a, b)))) if a == b => Some(p),
        Ok(_) => {
            cx.err(
                v.span(),
                format!(
                    "test port {s:?} is not one flow: name one port, e.g. \"tcp/5432\", \"udp/53\" or \"icmp\""
                ),
            );
            None
        }
        Err(e) => {
            cx.err(v.span(), format!("invalid port {s:?}: {e}"));
            None
        }
    }
}
