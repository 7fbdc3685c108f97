//! The two text formats `/metrics` serves, and which one a client gets.
//!
//! prometheus-client encodes OpenMetrics 1.0. Prometheus asks for it (its `Accept` header
//! lists `application/openmetrics-text` first), and gets it. Everything else that reads
//! `/metrics` (`curl | promtool check metrics`, older agents and scrapers) reads the
//! Prometheus text format 0.0.4, which differs in one way that matters: a counter's
//! `# HELP`/`# TYPE` lines name the family (`efa_probes`) in OpenMetrics but the sample
//! (`efa_probes_total`) in 0.0.4. Read as 0.0.4, the OpenMetrics text turns every counter
//! into an untyped series without help. So a client that does not ask for OpenMetrics
//! gets 0.0.4, converted from the same encoding: counter families renamed to their
//! `_total` sample, `# UNIT` and `# EOF` (OpenMetrics-only) dropped. This is the
//! negotiation the Go client library does too.

/// A text exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpositionFormat {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    PrometheusText,
}

impl ExpositionFormat {
    /// Picks the format for an `Accept` header: OpenMetrics when the client lists
    /// `application/openmetrics-text` with a non-zero quality, else Prometheus text.
    pub fn negotiate(accept: Option<&str>) -> ExpositionFormat {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media_type = parts.next().unwrap_or("");
                media_type.eq_ignore_ascii_case("application/openmetrics-text")
                    && !parts.any(is_zero_quality)
            })
        });
        if wants_openmetrics {
            ExpositionFormat::OpenMetrics
        } else {
            ExpositionFormat::PrometheusText
        }
    }

    pub const fn content_type(self) -> &'static str {
        match self {
            ExpositionFormat::OpenMetrics => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            }
            ExpositionFormat::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// `q=0` (or `q=0.0`, `q=0.000`): the client says it does not accept the type.
fn is_zero_quality(param: &str) -> bool {
    let Some((name, value)) = param.split_once('=') else {
        return false;
    };
    name.trim().eq_ignore_ascii_case("q")
        && value
            .trim()
            .parse::<f64>()
            .is_ok_and(|quality| quality <= 0.0)
}

/// Converts prometheus-client's OpenMetrics text to the Prometheus text format 0.0.4.
///
/// Handles what prometheus-client 0.24 emits: metadata lines in the order `HELP`, `TYPE`,
/// `UNIT`, then samples. Exemplars and `_created` samples would need more (this crate's
/// metrics have neither; the promtool test would catch them).
pub fn openmetrics_to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE, and only TYPE says whether the family is a counter.
    let mut pending_help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, pending_help.take(), None);
            pending_help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind): (String, &str) = match kind {
                "counter" => (format!("{family}_total"), "counter"),
                // An info family's sample is `<family>_info` with value 1: a gauge in 0.0.4.
                "info" => (format!("{family}_info"), "gauge"),
                "unknown" => (family.to_owned(), "untyped"),
                other => (family.to_owned(), other),
            };
            let help = pending_help
                .take()
                .filter(|(help_for, _)| *help_for == family);
            flush_help(&mut out, help, Some(&name));
            out.push_str("# TYPE ");
            out.push_str(&name);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            // OpenMetrics-only metadata; the unit is already the name's suffix.
        } else {
            flush_help(&mut out, pending_help.take(), None);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, pending_help, None);
    out
}

/// Writes a held `# HELP` line, under `rename` when its family's samples are named so.
fn flush_help(out: &mut String, help: Option<(&str, &str)>, rename: Option<&str>) {
    if let Some((family, text)) = help {
        out.push_str("# HELP ");
        out.push_str(rename.unwrap_or(family));
        out.push(' ');
        out.push_str(text);
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prometheus 2.x's scrape `Accept` header, verbatim.
    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_text() {
        use ExpositionFormat::*;
        assert_eq!(
            ExpositionFormat::negotiate(Some(PROMETHEUS_ACCEPT)),
            OpenMetrics
        );
        assert_eq!(
            ExpositionFormat::negotiate(Some("Application/OpenMetrics-Text; version=1.0.0")),
            OpenMetrics
        );
        assert_eq!(ExpositionFormat::negotiate(None), PrometheusText);
        assert_eq!(ExpositionFormat::negotiate(Some("*/*")), PrometheusText);
        assert_eq!(
            ExpositionFormat::negotiate(Some("text/plain;version=0.0.4")),
            PrometheusText
        );
        assert_eq!(
            ExpositionFormat::negotiate(Some("application/openmetrics-text;q=0,text/plain")),
            PrometheusText
        );
        assert_eq!(
            ExpositionFormat::negotiate(Some("application/openmetrics-text; q=0.1")),
            OpenMetrics
        );
    }

    #[test]
    fn counters_are_named_by_their_sample_and_openmetrics_lines_go() {
        let openmetrics = "\
# HELP efa_probes Peer probes.
# TYPE efa_probes counter
efa_probes_total{path=\"ip\",result=\"ok\"} 3
# HELP efa_peer_rtt_seconds Last RTT.
# TYPE efa_peer_rtt_seconds gauge
# UNIT efa_peer_rtt_seconds seconds
efa_peer_rtt_seconds{peer=\"a\",path=\"ip\"} 0.001
# HELP efa_build Build.
# TYPE efa_build info
efa_build_info{version=\"1\"} 1
# HELP efa_x Odd.
# TYPE efa_x unknown
efa_x 1
# EOF
";
        let text = "\
# HELP efa_probes_total Peer probes.
# TYPE efa_probes_total counter
efa_probes_total{path=\"ip\",result=\"ok\"} 3
# HELP efa_peer_rtt_seconds Last RTT.
# TYPE efa_peer_rtt_seconds gauge
efa_peer_rtt_seconds{peer=\"a\",path=\"ip\"} 0.001
# HELP efa_build_info Build.
# TYPE efa_build_info gauge
efa_build_info{version=\"1\"} 1
# HELP efa_x Odd.
# TYPE efa_x untyped
efa_x 1
";
        assert_eq!(openmetrics_to_prometheus_text(openmetrics), text);
    }
}
