//! Process-wide effects of loading libfabric.

use std::ptr;

/// Loads libfabric's providers, then takes SIGINT and SIGTERM back from them.
///
/// Some providers (shm among them) install SIGINT/SIGTERM handlers when libfabric loads; they
/// clean up and end the process. An application that shuts down gracefully (tokio's signal
/// handling chains to the handler it found) would be killed before it closes its endpoints.
/// After this call both signals have their default disposition, ready for the application's
/// own handler; endpoints it closes on shutdown clean up after themselves.
///
/// Call it once, early, before other threads install signal handlers. Returns the signals
/// whose handler was replaced.
pub fn init() -> Vec<&'static str> {
    // Any fi_getinfo loads every provider (fi_ini); a provider name that cannot exist makes
    // it cheap and returns nothing.
    let _ = crate::InfoList::get(&crate::Query::provider("efaprobe-load-providers"));
    let mut taken = Vec::new();
    for (signum, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
        // SAFETY: sigaction with a NULL new action only reads the current one into `old`,
        // a valid zeroed struct.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: see above.
        if unsafe { libc::sigaction(signum, ptr::null(), &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction == libc::SIG_DFL || old.sa_sigaction == libc::SIG_IGN {
            continue;
        }
        // SAFETY: a zeroed sigaction with SIG_DFL is a valid disposition to install; no other
        // thread of ours handles signals yet (documented precondition).
        let ok = unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signum, &dfl, ptr::null_mut()) == 0
        };
        if ok {
            taken.push(name);
        }
    }
    taken
}
