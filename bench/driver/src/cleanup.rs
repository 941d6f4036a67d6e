//! Making sure no process outlives the driver.
//!
//! Three layers: every child's pid is registered here while it runs, and [`Drop`] of its owner
//! kills it (normal end and panics); SIGINT/SIGTERM set a flag that a watcher thread turns into
//! "kill every registered child, remove the temp dir, exit 130" (a signal handler itself may do
//! almost nothing safely); and each child gets `PR_SET_PDEATHSIG = SIGKILL`, so even a driver
//! killed with SIGKILL takes its nodes with it. PDEATHSIG fires when the *thread* that spawned
//! the child exits, so children are only ever spawned from the main thread.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Set by the signal handler; read by the watcher thread.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Pids of running children.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// The run's temp directory, removed on interrupt.
static TEMP_ROOT: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handling and remembers `temp_root` for removal on interrupt.
pub fn install(temp_root: &Path) {
    let _ = TEMP_ROOT.set(temp_root.to_path_buf());
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    std::thread::spawn(|| loop {
        std::thread::sleep(Duration::from_millis(50));
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("\ninterrupted: stopping every node started by the bench");
            kill_all();
            if let Some(dir) = TEMP_ROOT.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        }
    });
}

/// Has the user asked to stop? Long loops check this to end early.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Makes `cmd`'s child die with the driver (see the module doc).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe and touches only the child's own attributes.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Records a running child.
pub fn register(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

/// Forgets a child that was reaped.
pub fn unregister(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// Continues (a SIGSTOPped process cannot die cleanly otherwise) and kills every registered child.
pub fn kill_all() {
    let pids = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pid in pids {
        signal(pid, libc::SIGCONT);
        signal(pid, libc::SIGKILL);
    }
}

/// Sends `sig` to child `pid`.
pub fn signal(pid: u32, sig: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: plain kill(2) on the pid of a child we started and have not reaped.
    unsafe { libc::kill(pid, sig) == 0 }
}
