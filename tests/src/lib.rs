//! Harness for the end-to-end tests: every node runs the real `segmesh-node`
//! binary in its own network namespace, joined to the others by a bridge that
//! lives in a private "hub" namespace, so a test touches nothing outside the
//! namespaces it creates. Guards remove namespaces and kill processes even
//! when a test panics.
//!
//! The tests need root (network namespaces, TUN); [`require_root`] fails a
//! test with a clear message otherwise.

pub mod cmd;
pub mod coord;
pub mod lab;
pub mod mesh;
pub mod node;
pub mod probe;
pub mod wait;

pub use cmd::{Proc, run, run_in, sh_in};
pub use lab::{Host, Lab};
pub use node::{NodeHandle, NodeSetup, WG_PORT, bin_path};
pub use wait::wait_until;

/// Fails the test unless it runs as root, saying how to run it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the end-to-end tests need root (network namespaces, /dev/net/tun): \
         run them as root, e.g. `sudo -E scripts/test` or `sudo -E cargo test -p segmesh-e2e` \
         (CI runs them as root)"
    );
}

/// A short tag unique to this process and call, for namespace and interface
/// names (interface names are limited to 15 bytes, and the WireGuard UAPI
/// socket directory is shared by all namespaces).
pub fn unique_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let v = (std::process::id() % 46_656) * 36 + (n % 36);
    base36(v, 4)
}

fn base36(mut v: u32, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}
