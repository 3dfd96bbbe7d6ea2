//! Cleaning up on Ctrl-C, SIGTERM and SIGHUP. A signal's default action
//! would kill the demo without running any destructor and leave namespaces
//! and daemons behind, so the signals are blocked in every thread and one
//! thread waits for them with sigwait(3), tears the lab down and exits.
//! Processes the demo spawns start with an empty signal mask again (the
//! standard library resets it before exec), so the daemons still stop on
//! SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use segmesh_e2e::Lab;

/// Set once a signal arrived: the main thread's errors are then expected
/// (its daemons are gone) and not worth reporting.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

static LAB: Mutex<Option<Weak<Lab>>> = Mutex::new(None);

const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Blocks the signals and starts the waiting thread. Call before any other
/// thread exists, so that every thread inherits the mask.
pub fn install() -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, s);
        }
    }
    // SAFETY: `set` is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || wait(set))?;
    Ok(())
}

/// Registers the lab to tear down when a signal arrives.
pub fn guard(lab: &Arc<Lab>) {
    *LAB.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(lab));
}

fn wait(set: libc::sigset_t) {
    let mut sig = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
    while unsafe { libc::sigwait(&set, &mut sig) } != 0 {}
    INTERRUPTED.store(true, Ordering::SeqCst);
    eprintln!("\ninterrupted (signal {sig}): stopping the mesh and removing its namespaces");
    let lab = LAB
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(Weak::upgrade);
    if let Some(lab) = lab {
        lab.teardown();
        let _ = std::fs::remove_dir_all(lab.dir());
    }
    std::process::exit(128 + sig);
}
