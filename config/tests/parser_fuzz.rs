//! The parsers never panic: arbitrary bytes, and TOML-shaped noise built
//! from policy fragments, give a value or errors with places.

#![allow(clippy::unwrap_used)] // test crate: a panic is the failure report

use proptest::prelude::*;
use segmesh_config::{Inventory, NetMap, Policy};

const FRAGMENTS: [&str; 24] = [
    "[segments.web]\n",
    "[segments.db]\n",
    "match = { role = \"web\" }\n",
    "match = { env = [\"a\", \"b\"] }\n",
    "exclude = { tier = \"x\" }\n",
    "[[allow]]\n",
    "[[deny]]\n",
    "[[test]]\n",
    "from = \"web\"\n",
    "to = \"db\"\n",
    "from = \"*\"\n",
    "to = [\"web\", \"db\"]\n",
    "ports = [\"tcp/5432\"]\n",
    "ports = []\n",
    "ports = [\"tcp/9-1\", 7]\n",
    "port = \"icmp\"\n",
    "expect = \"deny\"\n",
    "from = { role = \"web\" }\n",
    "to = \"db-1\"\n",
    "= = =\n",
    "[segments]\n",
    "segments = 3\n",
    "\"\u{e9}\u{1F600}\" = 1\n",
    "[[segments.web]]\n",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(errors) = Policy::parse("f.toml", &text) {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert!(e.to_string().starts_with("f.toml:"));
                prop_assert!(e.loc.line >= 1 && e.loc.col >= 1);
            }
        }
        let _ = Inventory::from_toml("i.toml", &text);
        let _ = NetMap::from_json(&bytes);
    }

    #[test]
    fn policy_shaped_noise(parts in proptest::collection::vec(0usize..FRAGMENTS.len(), 0..30), cut in any::<prop::sample::Index>()) {
        let text: String = parts.iter().map(|&i| FRAGMENTS[i]).collect();
        // Also cut the text at an arbitrary character boundary.
        let chars: Vec<char> = text.chars().collect();
        let cut_at = if chars.is_empty() { 0 } else { cut.index(chars.len() + 1) };
        let truncated: String = chars[..cut_at].iter().collect();
        for t in [&text, &truncated] {
            if let Err(errors) = Policy::parse("f.toml", t) {
                let lines = t.lines().count().max(1);
                for e in &errors.0 {
                    prop_assert!(e.loc.line <= lines + 1, "{e} beyond the end of\n{t}");
                }
            }
        }
    }
}
