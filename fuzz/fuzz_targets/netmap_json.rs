//! Netmap documents (the node <-> coordinator wire format) on arbitrary
//! input: a value or an error, never a panic; what parses re-serialises to
//! an equal value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use segmesh_config::NetMap;

fuzz_target!(|data: &[u8]| {
    if let Ok(map) = NetMap::from_json(data) {
        let again = NetMap::from_json(map.to_json_pretty().as_bytes()).expect("round trip");
        assert_eq!(again, map);
    }
});
