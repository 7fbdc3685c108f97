//! Process-wide effects of loading libfabric.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;

/// Signals a provider's own handler would end the process on; the application shuts down
/// gracefully on these.
const SHUTDOWN_SIGNALS: [(c_int, &str); 2] = [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")];

/// Signals of a fault (a crash inside a provider, among others).
const FAULT_SIGNALS: [(c_int, &str); 5] = [
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGABRT, "SIGABRT"),
];

/// A signal whose handler [`init`] replaced with the default disposition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReclaimedSignal {
    pub signal: &'static str,
    /// The shared object the replaced handler lived in, when the loader knows it.
    pub owner: Option<String>,
}

/// Loads libfabric's providers, then gives back to the process the signals they took.
///
/// Debian 12's libfabric links Intel's PSM libraries, and libinfinipath installs handlers
/// from its constructor, before `main`: for SIGINT and SIGTERM, and for SIGSEGV, SIGBUS,
/// SIGILL and SIGABRT. Each prints a backtrace and calls `exit(1)`. So a graceful shutdown
/// would be cut short (tokio's signal handling chains to the handler it found), and a crash
/// inside a provider (a segfault in rxd on a stray datagram) would look like an ordinary
/// error exit of 1 to a supervisor, which could not tell it from a bad setting.
///
/// After this call SIGINT and SIGTERM have their default disposition, ready for the
/// application's own handler, and each fault signal whose handler lives in a shared library
/// (not this program: Rust's own stack-overflow handler stays) has its default disposition
/// too, so the process dies of the signal and its parent sees it (a shell's 128+signo,
/// a container's exit code 139 for SIGSEGV). Endpoints closed on shutdown clean up after
/// themselves.
///
/// Call it once, early, before other threads install signal handlers. Returns the signals
/// whose handler was replaced.
pub fn init() -> Vec<ReclaimedSignal> {
    // Any fi_getinfo loads every provider (fi_ini); a provider name that cannot exist makes
    // it cheap and returns nothing.
    let _ = crate::InfoList::get(&crate::Query::provider("efaprobe-load-providers"));
    let mut taken = Vec::new();
    for (signum, name) in SHUTDOWN_SIGNALS {
        if let Some(handler) = installed_handler(signum) {
            if set_default(signum) {
                taken.push(ReclaimedSignal {
                    signal: name,
                    owner: foreign_owner(handler).flatten(),
                });
            }
        }
    }
    for (signum, name) in FAULT_SIGNALS {
        let Some(handler) = installed_handler(signum) else {
            continue;
        };
        let Some(owner) = foreign_owner(handler) else {
            continue;
        };
        if set_default(signum) {
            taken.push(ReclaimedSignal {
                signal: name,
                owner,
            });
        }
    }
    taken
}

/// The handler installed for `signum`, if it is neither the default nor ignored.
fn installed_handler(signum: c_int) -> Option<libc::sighandler_t> {
    // SAFETY: sigaction with a NULL new action only reads the current one into `old`, a
    // valid zeroed struct.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::sigaction(signum, ptr::null(), &mut old) } != 0 {
        return None;
    }
    (old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN)
        .then_some(old.sa_sigaction)
}

/// `None` when `handler` is this program's own code; otherwise `Some` with the shared
/// object holding it (`Some(None)` when the loader cannot say which).
fn foreign_owner(handler: libc::sighandler_t) -> Option<Option<String>> {
    let ours = loaded_object(init as *const () as *const c_void);
    match loaded_object(handler as *const c_void) {
        Some((base, _)) if ours.as_ref().is_some_and(|(b, _)| *b == base) => None,
        Some((_, name)) => Some(Some(name)),
        None => Some(None),
    }
}

/// The base address and file name of the loaded object holding `address`.
fn loaded_object(address: *const c_void) -> Option<(usize, String)> {
    // SAFETY: dladdr only reads the loader's tables for `address` (any value is allowed) and
    // fills `info`, a valid zeroed struct.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    if unsafe { libc::dladdr(address, &mut info) } == 0 || info.dli_fbase.is_null() {
        return None;
    }
    let name = if info.dli_fname.is_null() {
        String::new()
    } else {
        // SAFETY: dladdr set dli_fname to a NUL-terminated string owned by the loader, valid
        // while the object stays loaded (it is copied at once).
        unsafe { CStr::from_ptr(info.dli_fname) }
            .to_string_lossy()
            .into_owned()
    };
    Some((info.dli_fbase as usize, name))
}

/// Installs the default disposition for `signum`; true if it took.
fn set_default(signum: c_int) -> bool {
    // SAFETY: a zeroed sigaction with SIG_DFL is a valid disposition to install; no other
    // thread of ours handles signals yet (documented precondition of `init`).
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(signum, &dfl, ptr::null_mut()) == 0
    }
}

/// The open-files limit (`RLIMIT_NOFILE`) before and after [`raise_open_files_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit the process started with.
    pub was: u64,
    /// The soft limit now (the hard limit, when raising it worked).
    pub now: u64,
    /// The hard limit, which an unprivileged process cannot raise.
    pub hard: u64,
}

/// Raises the soft open-files limit to the hard one and returns both.
///
/// Container runtimes often start processes at a soft limit of 1024 with a far higher hard
/// limit; a server that holds connections and also opens sockets and endpoints for probing
/// wants the headroom. It lives here, with the crate's other process-wide calls, because this
/// is the crate that holds the project's `unsafe`. Infinite limits read as `u64::MAX`.
pub fn raise_open_files_limit() -> std::io::Result<OpenFilesLimit> {
    let mut limit = read_open_files_limit()?;
    let was = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit reads one valid, initialised rlimit struct; the soft value is
        // the hard one, which every process may set.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(OpenFilesLimit {
        was,
        now: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// The soft open-files limit in force now.
pub fn open_files_limit() -> std::io::Result<u64> {
    Ok(read_open_files_limit()?.rlim_cur)
}

fn read_open_files_limit() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct into `limit`, which is valid and ours.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_init_no_shared_library_handles_a_fault_or_shutdown_signal() {
        init();
        for (signum, name) in SHUTDOWN_SIGNALS {
            assert_eq!(installed_handler(signum), None, "{name} still handled");
        }
        for (signum, name) in FAULT_SIGNALS {
            if let Some(handler) = installed_handler(signum) {
                assert_eq!(
                    foreign_owner(handler),
                    None,
                    "{name} still handled by a shared library"
                );
            }
        }
    }

    #[test]
    fn a_handler_in_this_program_is_ours_and_one_in_libc_is_not() {
        extern "C" fn handler(_: c_int) {}
        assert_eq!(
            foreign_owner(handler as *const () as libc::sighandler_t),
            None
        );
        let owner = foreign_owner(libc::abort as *const () as libc::sighandler_t).flatten();
        assert!(
            owner.as_deref().is_some_and(|o| o.contains("libc")),
            "{owner:?}"
        );
    }

    #[test]
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let limit = raise_open_files_limit().unwrap();
        assert!(limit.was <= limit.now, "{limit:?}");
        assert_eq!(limit.now, limit.hard, "{limit:?}");
        assert_eq!(open_files_limit().unwrap(), limit.hard);
    }
}
