//! Retry delays: one exponential backoff for every retry the agent makes (the instance
//! metadata read at start, the Kubernetes pod watch), built with backon, the crate kube's
//! watcher backs off with.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Delays from `first`, doubling up to `longest`, without end: `first`, 2x, 4x, ... `longest`,
/// `longest`, ... (add `.with_jitter()` to spread each by up to its own length).
pub fn doubling(first: Duration, longest: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(first)
        .with_max_delay(longest)
        .with_factor(2.0)
        .without_max_times()
}

/// The delays themselves.
pub fn delays(builder: ExponentialBuilder) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_longest_and_go_on() {
        let s = Duration::from_secs;
        let got: Vec<Duration> = delays(doubling(s(1), s(300))).take(11).collect();
        assert_eq!(
            got,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300].map(s),
            "the instance-metadata retry's delays, as before"
        );
    }

    #[test]
    fn jitter_stays_within_one_delay_more() {
        let ms = Duration::from_millis;
        let plain: Vec<Duration> = delays(doubling(ms(800), ms(30_000))).take(8).collect();
        let spread: Vec<Duration> = delays(doubling(ms(800), ms(30_000)).with_jitter())
            .take(8)
            .collect();
        for (p, j) in plain.iter().zip(&spread) {
            assert!(j >= p && *j <= *p * 2, "{p:?} {j:?}");
        }
    }
}
