//! Running the real `segmesh-node` binary.

use std::path::PathBuf;

/// The path of a binary built from this workspace (`segmesh-node`,
/// `segmeshctl`, `probe`): cargo puts workspace binaries in the target
/// directory that holds the test executable (`target/debug/deps/..`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} does not exist: build the workspace binaries first \
         (`cargo build --workspace`; `cargo test --workspace` builds them too)",
        path.display()
    );
    path
}
