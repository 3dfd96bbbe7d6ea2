//! Every kind of policy error is reported as FILE:LINE:COL, all at once.

#![allow(clippy::unwrap_used)] // test crate: a panic is the failure report

use segmesh_config::{Inventory, Policy};

fn errors(text: &str) -> Vec<String> {
    Policy::parse("p.toml", text)
        .unwrap_err()
        .to_string()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn all_errors_at_once_with_places() {
    let text = r#"[segments.web]
match = { role = "web" }
colour = "blue"

[segments.web]
match = { role = "www" }

[segments.db]
match = { role = "db" }

[[allow]]
from = "web"
to = "dbb"
ports = ["tcp/70000", "tcp/90-80"]

[[allow]]
from = "web"
to = "db"
ports = []

[[deny]]
from = "web"
porst = ["tcp/1"]

[[test]]
from = "web-1"
to = { role = "db" }
port = "tcp/5432"
expect = "maybe"

[extra]
"#;
    let got = errors(text);
    let want = [
        "p.toml:3:1: unknown key `colour` in segment `web`: expected `match`, `exclude`",
        "p.toml:5:11: duplicate segment name `web`: each segment is defined once",
        "p.toml:13:6: unknown segment `dbb` (did you mean `db`?)",
        "p.toml:14:10: invalid port \"tcp/70000\": \"70000\" is not a port number (0-65535)",
        "p.toml:14:23: invalid port \"tcp/90-80\": port range 90-80 is reversed: the first port must not exceed the second",
        "p.toml:19:9: `ports` must not be empty: list what the rule covers, e.g. [\"tcp/443\"], or [\"any\"]",
        "p.toml:21:1: [[deny]] is missing `ports`",
        "p.toml:21:1: [[deny]] is missing `to`",
        "p.toml:23:1: unknown key `porst` in [[deny]]: expected `from`, `to`, `ports`, `description`",
        "p.toml:29:10: `expect` must be \"allow\" or \"deny\"",
        "p.toml:31:2: unknown key `extra`: a policy has only `segments`, `allow`, `deny` and `test`",
    ];
    assert_eq!(got, want);
}

#[test]
fn syntax_errors_have_places() {
    let got = errors("[segments.web]\nmatch = { role = \"web\" \n");
    assert!(got[0].starts_with("p.toml:2:"), "{got:?}");
    let got = errors("[[allow]]\nfrom = \"*\"\nto = \"*\"\nports = [\"tcp/22\"\n");
    assert!(got[0].starts_with("p.toml:4:"), "{got:?}");
}

#[test]
fn duplicates_in_other_spellings() {
    let got = errors(
        "[segments.web]\nmatch = { role = \"web\" }\n[[allow]]\nfrom = \"web\"\nfrom = \"web\"\nto = \"web\"\nports = [\"tcp\"]\n[segments]\nweb = 3\n",
    );
    assert_eq!(
        got,
        [
            "p.toml:5:1: duplicate key `from`",
            "p.toml:9:1: duplicate segment name `web`: each segment is defined once",
        ]
    );
}

#[test]
fn value_errors() {
    let got = errors(
        r#"[segments.a]
match = { role = ["x", 3] }
exclude = "nope"
[segments."b c"]
match = {}
[segments.c]
[[allow]]
from = ["*", "a"]
to = []
ports = ["sctp/1", "icmp/8", "any/1"]
[[test]]
from = "Web"
to = 7
port = "tcp/1-2"
expect = "allow"
[[test]]
from = {}
to = {}
port = "any"
expect = "deny"
"#,
    );
    let joined = got.join("\n");
    for needle in [
        "p.toml:2:24: label `role` in `match` of segment `a`: expected a string, found an integer",
        "p.toml:3:11: `exclude` of segment `a` must be a table of labels",
        "p.toml:4:11: invalid segment name `b c`",
        "p.toml:6:11: segment `c` has no `match`",
        "p.toml:8:8: \"*\" already means every node",
        "p.toml:9:6: a rule's `from`/`to` must name at least one segment",
        "p.toml:10:10: invalid port \"sctp/1\": unknown protocol",
        "p.toml:10:20: invalid port \"icmp/8\": icmp takes no port numbers",
        "p.toml:10:30: invalid port \"any/1\"",
        "p.toml:12:8: invalid node name \"Web\"",
        "p.toml:13:6: a test endpoint is a node name or a table of labels, not an integer",
        "p.toml:14:8: test port \"tcp/1-2\" is not one flow",
        "p.toml:19:8: test port \"any\" is not one flow",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
}

#[test]
fn tests_naming_unknown_nodes_need_the_inventory() {
    let text = r#"[segments.db]
match = { role = "db" }
[[test]]
from = "web-1"
to = "db"
port = "tcp/5432"
expect = "deny"
"#;
    assert!(Policy::parse("p.toml", text).is_ok());
    let inv = Inventory::from_toml(
        "inv.toml",
        "[[node]]\nname = \"web-1\"\npublic_key = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\"\naddresses = [\"100.80.0.1\"]\n",
    )
    .unwrap();
    let err = Policy::parse_with_inventory("p.toml", text, &inv)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "p.toml:5:6: unknown node `db`: not in the inventory (`db` is a segment; a test endpoint is a node name or a table of labels)"
    );
}

#[test]
fn a_valid_policy_parses() {
    let p = Policy::parse(
        "p.toml",
        r#"
[segments.web]
match = { role = "web" }
[[allow]]
from = "web"
to = "web"
ports = "tcp/443"
"#,
    )
    .unwrap();
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].loc.line, 4);
    assert_eq!(p.at(p.rules[0].loc), "p.toml:4");
}
