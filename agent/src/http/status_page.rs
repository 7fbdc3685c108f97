//! The status page at `/`: what an operator paged at night needs at a glance. Worst news
//! first: a banner that says whether anything is wrong, then the peers (broken ones on
//! top), the targets, and this node's fabric.
//!
//! Node names, addresses and error texts come from peers and servers, so every value is
//! escaped ([`Escaped`]); the page has no scripts and loads nothing else.

use std::fmt::{self, Write};

use crate::probe::{TargetCheck, TargetReport};
use crate::state::{FabricStatus, PathStatus, PeerStatus};
use crate::verdict::PeerState;

/// How often the page reloads itself (a `<meta>` refresh: no script needed).
const REFRESH_SECONDS: u32 = 30;

/// Everything the page shows, read once per request.
#[derive(Debug, Clone)]
pub struct StatusSnapshot {
    pub node_name: String,
    pub agent_version: String,
    pub ready: bool,
    pub fabric: FabricStatus,
    pub peers: Vec<PeerStatus>,
    pub targets: Vec<TargetReport>,
    pub now_unix: u64,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape_html(text: &str) -> String {
    Escaped(text).to_string()
}

/// Text that is written escaped: the page's only way to put a value into the HTML.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(at) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..at])?;
            f.write_str(match rest.as_bytes()[at] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[at + 1..];
        }
        f.write_str(rest)
    }
}

const STYLE: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
main{max-width:1400px;margin:0 auto;padding:16px 24px}
h1{font-size:20px;margin:0 0 8px}
h2{font-size:16px;margin:24px 0 8px}
.banner{padding:10px 14px;border-radius:6px;font-size:16px;font-weight:600;margin:8px 0 4px}
.banner.ok{background:#dafbe1;color:#116329;border:1px solid #4ac26b}
.banner.warn{background:#fff8c5;color:#7d4e00;border:1px solid #d4a72c}
.banner.bad{background:#ffebe9;color:#a40e26;border:1px solid #ff818266}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #d0d7de}
th,td{text-align:left;vertical-align:top;padding:6px 8px;border-bottom:1px solid #d0d7de}
th{background:#f6f8fa;font-weight:600;white-space:nowrap}
td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.muted{color:#656d76}
.err{overflow-wrap:anywhere;max-width:32em}
.name{white-space:nowrap}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:12px;white-space:nowrap;color:#fff}
.s-healthy{background:#1a7f37}.s-degraded{background:#9a6700}.s-fabric_dropped{background:#cf222e}
.s-ip_blocked{background:#bc4c00}.s-down{background:#82071e}.s-unknown{background:#6e7781}
.ok{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:700}
tr.problem td{background:#fff5f5}
footer{margin:24px 0;color:#656d76;font-size:12px}
";

/// Renders the whole page.
pub fn render_status_page(s: &StatusSnapshot) -> String {
    let mut page = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail.
    let _ = write_page(&mut page, s);
    page
}

fn write_page(out: &mut String, s: &StatusSnapshot) -> fmt::Result {
    let node = Escaped(&s.node_name);
    write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>efaprobe: {node}</title><style>{STYLE}</style></head>\n<body><main>\n\
         <h1>efaprobe on <span class=\"mono\">{node}</span> "
    )?;
    if s.ready {
        out.push_str("<span class=\"badge s-healthy\">READY</span>");
    } else {
        out.push_str(
            "<span class=\"badge s-degraded\" title=\"the first probe round has not finished\">\
             NOT READY</span>",
        );
    }
    out.push_str("</h1>\n");
    write_banner(out, s)?;
    write_peers(out, s)?;
    write_targets(out, &s.targets)?;
    write_fabric(out, &s.fabric)?;
    write!(
        out,
        "<footer>efaprobe {} · {} · reloads every {REFRESH_SECONDS} s · \
         <a href=\"/v1/peers\">/v1/peers</a> · <a href=\"/v1/targets\">/v1/targets</a> · \
         <a href=\"/v1/hello\">/v1/hello</a> · <a href=\"/metrics\">/metrics</a></footer>\n\
         </main></body></html>\n",
        Escaped(&s.agent_version),
        utc_time(s.now_unix),
    )
}

/// One line that answers "is anything wrong, and how bad".
fn write_banner(out: &mut String, s: &StatusSnapshot) -> fmt::Result {
    let broken = PeerState::is_unreachable;
    let unhealthy = s.peers.iter().filter(|p| p.state != PeerState::Healthy);
    let unhealthy_count = unhealthy.clone().count();
    let (addresses, failing) = target_counts(&s.targets);

    let mut parts = Vec::new();
    if s.peers.is_empty() {
        parts.push("no peers known".to_owned());
    } else if unhealthy_count == 0 {
        parts.push(format!("all {} peers healthy", s.peers.len()));
    } else {
        let mut by_state = Vec::new();
        for state in SEVERITY_ORDER {
            let n = s.peers.iter().filter(|p| p.state == state).count();
            if n > 0 && state != PeerState::Healthy {
                by_state.push(format!("{n} {}", state.as_str()));
            }
        }
        parts.push(format!(
            "{unhealthy_count} of {} peers not healthy ({})",
            s.peers.len(),
            by_state.join(", ")
        ));
    }
    if addresses > 0 {
        parts.push(if failing == 0 {
            format!("all {addresses} target addresses ok")
        } else {
            format!("{failing} of {addresses} target addresses failing")
        });
    }
    if !s.fabric.available {
        parts.push("no fabric on this node".to_owned());
    }

    let class = if failing > 0 || s.peers.iter().any(|p| broken(p.state)) {
        "bad"
    } else if unhealthy_count > 0 || !s.fabric.available || !s.ready {
        "warn"
    } else {
        "ok"
    };
    writeln!(
        out,
        "<div class=\"banner {class}\">{}</div>",
        Escaped(&parts.join(" · "))
    )
}

/// Worst first: the order peers are listed in.
const SEVERITY_ORDER: [PeerState; 6] = [
    PeerState::Down,
    PeerState::FabricDropped,
    PeerState::IpBlocked,
    PeerState::Degraded,
    PeerState::Unknown,
    PeerState::Healthy,
];

fn severity(state: PeerState) -> usize {
    SEVERITY_ORDER.iter().position(|s| *s == state).unwrap_or(0)
}

fn write_peers(out: &mut String, s: &StatusSnapshot) -> fmt::Result {
    writeln!(out, "<h2>Peers ({})</h2>", s.peers.len())?;
    out.push_str(
        "<table><thead><tr><th>Peer</th><th>State</th><th>Reason</th><th>Summary</th>\
         <th>IP RTT</th><th>Fabric RTT</th><th>Fabric loss</th><th>Last error</th></tr></thead>\
         <tbody>\n",
    );
    if s.peers.is_empty() {
        out.push_str(
            "<tr><td colspan=\"8\" class=\"muted\">No peers known yet: none configured or \
             discovered.</td></tr>\n",
        );
    }
    let mut peers: Vec<&PeerStatus> = s.peers.iter().collect();
    peers.sort_by(|a, b| {
        severity(a.state)
            .cmp(&severity(b.state))
            .then_with(|| a.name.cmp(&b.name))
    });
    for p in peers {
        let row_class = if p.state == PeerState::Healthy {
            ""
        } else {
            " class=\"problem\""
        };
        write!(
            out,
            "<tr{row_class}><td class=\"name\"><span class=\"mono\">{}</span>",
            Escaped(&p.name)
        )?;
        if p.address != p.name {
            write!(
                out,
                "<br><span class=\"mono muted\">{}</span>",
                Escaped(&p.address)
            )?;
        }
        if let Some(conflict) = &p.name_conflict {
            write!(
                out,
                "<br><span class=\"muted\">name_conflict: the name is held by <span \
                 class=\"mono\">{}</span></span>",
                Escaped(&conflict.held_by)
            )?;
        }
        let state = p.state.as_str();
        write!(
            out,
            "</td><td><span class=\"badge s-{state}\">{state}</span>"
        )?;
        if p.since_unix > 0 && p.since_unix <= s.now_unix {
            write!(
                out,
                "<br><span class=\"muted\">for {}</span>",
                duration_words(s.now_unix - p.since_unix)
            )?;
        }
        let reason = p.reason.map(|r| r.as_str()).unwrap_or("");
        let summary = if p.summary.is_empty() {
            "—"
        } else {
            &p.summary
        };
        write!(
            out,
            "</td><td class=\"mono\">{reason}</td><td>{}</td>\
             <td class=\"num mono\">{}</td><td class=\"num mono\">{}{}</td><td class=\"num mono\">{}</td>\
             <td class=\"err\">",
            Escaped(summary),
            path_rtt(&p.ip),
            path_rtt(&p.fabric),
            rails_answering(p),
            if p.fabric.reachable.is_some() {
                format!("{:.0}%", p.fabric_loss * 100.0)
            } else {
                "—".to_owned()
            },
        )?;
        write_last_error(out, "IP", &p.ip)?;
        write_last_error(out, "fabric", &p.fabric)?;
        write_failing_rails(out, p)?;
        out.push_str("</td></tr>\n");
    }
    out.push_str("</tbody></table>\n");
    Ok(())
}

/// How many of the rails paired with the peer answer, under its fabric RTT (several rails).
fn rails_answering(p: &PeerStatus) -> String {
    if p.rails.len() < 2 {
        return String::new();
    }
    let answering = p
        .rails
        .iter()
        .filter(|r| r.path.reachable == Some(true))
        .count();
    format!(
        "<br><span class=\"muted\">rails {answering}/{}</span>",
        p.rails.len()
    )
}

/// Each rail to the peer that does not answer: its index, both devices, its reason and
/// error.
fn write_failing_rails(out: &mut String, p: &PeerStatus) -> fmt::Result {
    if p.rails.len() < 2 {
        return Ok(());
    }
    for rail in p
        .rails
        .iter()
        .filter(|r| r.path.reachable == Some(false) || r.reason.is_some())
    {
        write!(
            out,
            "<div><b>rail {}</b> <span class=\"mono\">{} → {}</span>",
            rail.rail,
            Escaped(&rail.domain),
            Escaped(&rail.peer_domain)
        )?;
        if let Some(reason) = rail.reason {
            write!(out, " <span class=\"mono\">{}</span>", reason.as_str())?;
        }
        if let Some(error) = &rail.path.last_error {
            write!(out, ": {}", Escaped(error))?;
        }
        out.push_str("</div>");
    }
    Ok(())
}

/// The RTT cell of one path: the last RTT, or why there is none.
fn path_rtt(path: &PathStatus) -> String {
    match (path.reachable, path.rtt_seconds) {
        (_, Some(rtt)) => seconds_words(rtt),
        (None, None) => "<span class=\"muted\" title=\"not probed\">—</span>".to_owned(),
        (Some(_), None) => "—".to_owned(),
    }
}

/// A path's last failure. Muted, and said to be earlier, when the path works again.
fn write_last_error(out: &mut String, path_name: &str, path: &PathStatus) -> fmt::Result {
    if path.last_failure.is_none() && path.last_error.is_none() {
        return Ok(());
    }
    let (class, earlier) = if path.reachable == Some(true) {
        (" class=\"muted\"", "earlier, ")
    } else {
        ("", "")
    };
    write!(out, "<div{class}><b>{earlier}{path_name}</b>")?;
    if let Some(reason) = &path.last_failure {
        write!(out, " <span class=\"mono\">{}</span>", reason.as_str())?;
    }
    if let Some(error) = &path.last_error {
        write!(out, ": {}", Escaped(error))?;
    }
    out.push_str("</div>");
    Ok(())
}

/// (addresses checked, addresses failing); a name that did not resolve counts as one.
fn target_counts(targets: &[TargetReport]) -> (usize, usize) {
    targets
        .iter()
        .map(|t| match &t.addresses {
            Ok(addresses) => (
                addresses.len(),
                addresses.iter().filter(|a| !a.is_ok()).count(),
            ),
            Err(_) => (1, 1),
        })
        .fold((0, 0), |(a, f), (a2, f2)| (a + a2, f + f2))
}

fn write_targets(out: &mut String, targets: &[TargetReport]) -> fmt::Result {
    writeln!(out, "<h2>Targets ({})</h2>", targets.len())?;
    out.push_str(
        "<table><thead><tr><th>Target</th><th>Address</th><th>Result</th><th>Reason</th>\
         <th>Message</th><th>Connect RTT</th></tr></thead><tbody>\n",
    );
    if targets.is_empty() {
        out.push_str(
            "<tr><td colspan=\"6\" class=\"muted\">No target results: none configured, or the \
             first check has not finished.</td></tr>\n",
        );
    }
    for t in targets {
        // The check kind, unless the name already says it (`nats` checked as `nats`).
        let check = t.spec.check.to_string();
        let name = if check == t.spec.name {
            format!("<span class=\"mono\">{}</span>", Escaped(&t.spec.name))
        } else {
            format!(
                "<span class=\"mono\">{}</span> <span class=\"muted\">{} check</span>",
                Escaped(&t.spec.name),
                Escaped(&check)
            )
        };
        match &t.addresses {
            Err(failure) => writeln!(
                out,
                "<tr class=\"problem\"><td>{name}</td><td class=\"mono\">{}</td>\
                 <td class=\"fail\">FAIL</td><td class=\"mono\">{}</td><td class=\"err\">{}</td>\
                 <td class=\"num\">—</td></tr>",
                Escaped(&t.spec.authority()),
                failure.reason,
                Escaped(&failure.message)
            )?,
            Ok(addresses) => {
                for a in addresses {
                    match &a.result {
                        Ok(success) => {
                            let mut detail = Vec::new();
                            if let Some(status) = success.http_status {
                                detail.push(format!("HTTP {status}"));
                            }
                            if let Some(nats) = &success.nats {
                                detail.push(format!(
                                    "NATS {}, JetStream {}",
                                    nats.version,
                                    if nats.jetstream { "on" } else { "OFF" }
                                ));
                            }
                            // A NATS server without JetStream passes the handshake but fails
                            // every client that needs streams: flag it.
                            let jetstream_off = matches!(t.spec.check, TargetCheck::Nats)
                                && success.nats.as_ref().is_some_and(|n| !n.jetstream);
                            writeln!(
                                out,
                                "<tr><td>{name}</td><td class=\"mono\">{}</td>\
                                 <td class=\"ok\">ok</td><td></td><td{}>{}</td>\
                                 <td class=\"num mono\">{}</td></tr>",
                                a.address,
                                if jetstream_off { " class=\"fail\"" } else { "" },
                                Escaped(&detail.join(", ")),
                                seconds_words(success.connect_rtt.as_secs_f64())
                            )?;
                        }
                        Err(failure) => writeln!(
                            out,
                            "<tr class=\"problem\"><td>{name}</td><td class=\"mono\">{}</td>\
                             <td class=\"fail\">FAIL</td><td class=\"mono\">{}</td>\
                             <td class=\"err\">{}</td><td class=\"num\">—</td></tr>",
                            a.address,
                            failure.reason,
                            Escaped(&failure.message)
                        )?,
                    }
                }
                if t.addresses_skipped > 0 {
                    writeln!(
                        out,
                        "<tr><td>{name}</td><td colspan=\"5\" class=\"muted\">{} more addresses \
                         not checked</td></tr>",
                        t.addresses_skipped
                    )?;
                }
            }
        }
    }
    out.push_str("</tbody></table>\n");
    Ok(())
}

fn write_fabric(out: &mut String, fabric: &FabricStatus) -> fmt::Result {
    write!(
        out,
        "<h2>Fabric on this node</h2>\n<p>Provider <span class=\"mono\">{}</span>: ",
        Escaped(&fabric.provider)
    )?;
    if fabric.available {
        write!(
            out,
            "<span class=\"ok\">available</span>, {} rail{} open.",
            fabric.devices.len(),
            if fabric.devices.len() == 1 { "" } else { "s" }
        )?;
    } else {
        out.push_str("<span class=\"fail\">NOT AVAILABLE</span>");
        match &fabric.error {
            Some(error) => write!(out, ": {}", Escaped(error))?,
            None => out.push('.'),
        }
        out.push_str(
            "<br><span class=\"muted\">Peers are probed over IP only; their fabric state stays \
             unknown.</span>",
        );
    }
    out.push_str("</p>\n");
    if !fabric.devices.is_empty() {
        out.push_str(
            "<table><thead><tr><th>Rail</th><th>Domain (device)</th><th>Provider</th>\
             <th>Address</th><th>Interface MAC</th></tr></thead><tbody>\n",
        );
        for d in &fabric.devices {
            writeln!(
                out,
                "<tr><td class=\"num mono\">{}</td><td class=\"mono\">{}</td>\
                 <td class=\"mono\">{}</td><td class=\"mono\">{}</td><td class=\"mono\">{}</td></tr>",
                d.rail,
                Escaped(&d.domain),
                Escaped(&d.provider),
                Escaped(&d.address),
                Escaped(d.mac.as_deref().unwrap_or("—"))
            )?;
        }
        out.push_str("</tbody></table>\n");
    }
    Ok(())
}

/// `412 µs`, `3.2 ms`, `1.50 s`: the unit a person reads fastest for the magnitude.
fn seconds_words(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "—".to_owned();
    }
    if seconds < 1e-3 {
        format!("{:.0} µs", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.1} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

/// `45s`, `12m 5s`, `3h 20m`, `2d 4h`.
fn duration_words(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `2025-03-01 04:05:06 UTC`, from seconds since the epoch (civil-from-days, proleptic
/// Gregorian calendar), so the page needs no time-zone data.
fn utc_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape_html("<script>alert('x&y')</script>"),
            "&lt;script&gt;alert(&#39;x&amp;y&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape_html("a=\"b\""), "a=&quot;b&quot;");
        assert_eq!(escape_html("plain-node-1"), "plain-node-1");
        assert_eq!(escape_html(""), "");
    }

    #[test]
    fn human_units() {
        assert_eq!(seconds_words(0.000_412), "412 µs");
        assert_eq!(seconds_words(0.003_21), "3.2 ms");
        assert_eq!(seconds_words(1.5), "1.50 s");
        assert_eq!(seconds_words(f64::NAN), "—");
        assert_eq!(duration_words(45), "45s");
        assert_eq!(duration_words(725), "12m 5s");
        assert_eq!(duration_words(12_000), "3h 20m");
        assert_eq!(duration_words(187_200), "2d 4h");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_740_801_906), "2025-03-01 04:05:06 UTC");
    }
}
