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
    fn the_soft_open_files_limit_is_raised_to_the_hard_one() {
        let limit = raise_open_files_limit().unwrap();
        assert!(limit.was <= limit.now, "{limit:?}");
        assert_eq!(limit.now, limit.hard, "{limit:?}");
        assert_eq!(open_files_limit().unwrap(), limit.hard);
    }
}
