//! Benchmark: what idle rails cost (issue #12 item 1). Opens N rails of `udp;ofi_rxd` on
//! loopback (the same address N times: N endpoints), lets them idle (no peers, no probes:
//! rail 0 polls every `idle_poll` to answer pings, rails 1 and up every `rail_poll`), and
//! measures over a window the CPU time of
//! the process's threads (`/proc/self/task/*/schedstat`, nanoseconds on the CPU) and the
//! engine threads' wake-ups (voluntary context switches). Two layouts: every rail on one
//! thread (`open_rails`, what the agent does), and, for reference, a thread per rail (one
//! `FabricPinger::start` each, as the engine ran before).
//!
//!   benches/rails_idle.sh     (or: cargo bench -p efaprobe --bench rails_idle)
//!
//! Environment: `RAILS_IDLE_SECS` (window, default 10), `RAILS_IDLE_PROVIDER` (default
//! `udp;ofi_rxd`). Prints a Markdown table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use efaprobe::fabric_ping::{self, FabricPinger, PingerConfig};

/// Per thread: (CPU ns, voluntary context switches, name).
fn threads() -> HashMap<String, (u64, u64, String)> {
    let mut out = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let Ok(task) = task else { continue };
        let path = task.path();
        let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap_or_default();
        let cpu_ns = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let switches = read("status")
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        let name = read("comm").trim().to_owned();
        out.insert(
            task.file_name().to_string_lossy().into_owned(),
            (cpu_ns, switches, name),
        );
    }
    out
}

struct Measured {
    /// CPU of the whole process over the window, as a percentage of one core.
    process_pct: f64,
    /// Wake-ups per second of the engine threads, summed.
    wakeups_per_s: f64,
    engine_threads: usize,
}

fn measure(window: Duration) -> Measured {
    let before = threads();
    let started = Instant::now();
    std::thread::sleep(window);
    let after = threads();
    let secs = started.elapsed().as_secs_f64();
    let (mut cpu_ns, mut switches, mut engines) = (0u64, 0u64, 0usize);
    for (tid, (cpu, sw, name)) in &after {
        // Threads that exist at both reads: the engines and the main thread.
        let Some((cpu0, sw0, _)) = before.get(tid) else {
            continue;
        };
        cpu_ns += cpu - cpu0;
        if name.starts_with("fabric-") {
            switches += sw - sw0;
            engines += 1;
        }
    }
    Measured {
        process_pct: cpu_ns as f64 / 1e9 / secs * 100.0,
        wakeups_per_s: switches as f64 / secs,
        engine_threads: engines,
    }
}

/// CPU time one more endpoint adds to a wake-up when its completion queues are polled the
/// way the engine polls idle rails (all of them, once per `idle_poll`, caches gone cold in
/// between), without the engine: `rails` raw endpoints polled in turn after each sleep, minus
/// one endpoint so polled, over the extra endpoints. In microseconds.
fn cold_poll_us(config: &PingerConfig, bind: IpAddr, rails: usize) -> f64 {
    let infos = fabric_ping::rail_infos(config, &vec![bind; rails]).expect("rails");
    let domains: Vec<fabric::Domain> = infos
        .into_iter()
        .map(|info| fabric::Domain::open(info).expect("domain"))
        .collect();
    let mut eps: Vec<fabric::Endpoint> = domains
        .iter()
        .map(|d| fabric::Endpoint::open(d, fabric::EndpointConfig::default()).expect("ep"))
        .collect();
    let (mut events, mut rx) = (Vec::new(), Vec::new());
    const WAKEUPS: u32 = 250;
    let mut cpu_per_wakeup = |n: usize| {
        let before = thread_cpu_ns();
        for _ in 0..WAKEUPS {
            std::thread::sleep(config.idle_poll);
            for ep in &mut eps[..n] {
                events.clear();
                rx.clear();
                ep.poll(&mut events, &mut rx).expect("poll");
            }
        }
        (thread_cpu_ns() - before) as f64 / f64::from(WAKEUPS)
    };
    let one = cpu_per_wakeup(1);
    let all = cpu_per_wakeup(rails);
    (all - one) / (rails - 1) as f64 / 1e3
}

/// CPU ns of the calling thread.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let window = std::env::var("RAILS_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(10));
    let provider = std::env::var("RAILS_IDLE_PROVIDER").unwrap_or_else(|_| "udp;ofi_rxd".into());
    fabric_ping::prepare_environment(&provider);
    let config = PingerConfig::new(&provider);
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let poll_us = cold_poll_us(&config, loopback, 32);
    // A rail beyond the first polls every `rail_poll` on one thread (rails 1 and up are
    // steady), every `idle_poll` with a thread of its own (each is rail 0 of its group).
    let poll_pct = |period: Duration| poll_us / period.as_secs_f64() / 1e4;
    let mut rows = Vec::new();
    let mut one_rail_pct = None;
    for (layout, rails) in [
        ("one thread", 1),
        ("one thread", 8),
        ("one thread", 32),
        ("a thread per rail", 32),
    ] {
        let handles: Vec<FabricPinger> = if layout == "one thread" {
            fabric_ping::open_rails(&config, &vec![loopback; rails]).expect("open rails")
        } else {
            let infos = fabric_ping::rail_infos(&config, &vec![loopback; rails]).expect("rails");
            infos
                .into_iter()
                .map(|info| FabricPinger::start(info, config.clone()).expect("start"))
                .collect()
        };
        assert_eq!(handles.len(), rails);
        // Let the endpoints settle (first polls, provider start-up).
        std::thread::sleep(Duration::from_secs(1));
        let m = measure(window);
        let base = *one_rail_pct.get_or_insert(m.process_pct);
        // What is left once the extra rails' completion-queue polls are taken off.
        let period = if layout == "one thread" {
            config.rail_poll
        } else {
            config.idle_poll
        };
        let beyond_polls = m.process_pct - (rails - 1) as f64 * poll_pct(period);
        rows.push(format!(
            "| {layout} | {rails} | {} | {:.3}% | {:.1} | {:.2} | {:.2} |",
            m.engine_threads,
            m.process_pct,
            m.wakeups_per_s,
            m.process_pct / base,
            beyond_polls / base
        ));
        for h in &handles {
            h.shutdown();
        }
    }
    println!(
        "Provider `{provider}` on 127.0.0.1, `idle_poll` {:?} (rail 0), `rail_poll` {:?} (rails 1 \
         and up on one thread), window {:?} per row.",
        config.idle_poll, config.rail_poll, window
    );
    println!();
    println!(
        "The unavoidable part, measured without the engine: polling the completion queues of \
         32 raw endpoints in turn every `idle_poll` costs {poll_us:.2} µs of CPU per endpoint \
         beyond the first per wake-up ({:.3}% of a core per rail polled every `idle_poll`, \
         {:.3}% every `rail_poll`).",
        poll_pct(config.idle_poll),
        poll_pct(config.rail_poll)
    );
    println!();
    println!("| layout | rails | engine threads | process CPU (% of a core) | engine wake-ups/s | vs 1 rail | vs 1 rail, less the extra rails' CQ polls |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}
