//! Policy and inventory parsing on arbitrary input: errors, never panics;
//! every error points inside the file; a policy that parses compiles.
#![no_main]

use libfuzzer_sys::fuzz_target;
use segmesh_config::{Inventory, Policy};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Policy::parse("fuzz.toml", &text) {
        Ok(policy) => {
            let inv = Inventory::from_toml("inv.toml", &text).unwrap_or_default();
            let _ = segmesh_config::compile::compile(&inv, &policy);
        }
        Err(errors) => {
            let lines = text.lines().count() + 1;
            for e in &errors.0 {
                assert!(e.loc.line >= 1 && e.loc.line <= lines, "{e}");
            }
        }
    }
});
