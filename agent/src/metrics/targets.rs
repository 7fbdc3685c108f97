//! The target series (`efa_target_*`), set from each round's reports.

use std::collections::HashSet;

use super::*;

impl Metrics {
    /// Sets the target series from one round's reports (all configured targets), counts
    /// the round's failures, and removes the gauges of addresses and targets not in it.
    pub fn set_targets(&self, reports: &[TargetReport]) {
        let mut book = self.book();
        let mut up = HashSet::new();
        let mut rtt = HashSet::new();
        let mut jetstream = HashSet::new();
        let mut failures = HashSet::new();

        for report in reports {
            let target = LabelText::from(report.spec.name.as_str());
            let as_configured = LabelText(report.spec.authority());
            if report.spec.ip().is_none() {
                // Zeroed, so the first resolution failure is an increase.
                let dns = TargetFailureLabels {
                    target: target.clone(),
                    address: as_configured.clone(),
                    reason: FailureLabel(FailureReason::Dns),
                };
                create_series(&self.target_failures, &dns);
                failures.insert(dns);
            }
            let addresses = match &report.addresses {
                Ok(addresses) => addresses,
                Err(failure) => {
                    let labels = TargetAddressLabels {
                        target: target.clone(),
                        address: as_configured.clone(),
                    };
                    self.target_up.get_or_create(&labels).set(0);
                    up.insert(labels);
                    let counted = TargetFailureLabels {
                        target: target.clone(),
                        address: as_configured,
                        reason: FailureLabel(failure.reason),
                    };
                    self.target_failures.get_or_create(&counted).inc();
                    failures.insert(counted);
                    continue;
                }
            };
            for address in addresses {
                let labels = TargetAddressLabels {
                    target: target.clone(),
                    address: LabelText(address.address.to_string()),
                };
                let failure_labels = |reason| TargetFailureLabels {
                    target: labels.target.clone(),
                    address: labels.address.clone(),
                    reason: FailureLabel(reason),
                };
                for &reason in address_failures(&report.spec.check) {
                    let zeroed = failure_labels(reason);
                    create_series(&self.target_failures, &zeroed);
                    failures.insert(zeroed);
                }
                self.target_up
                    .get_or_create(&labels)
                    .set(i64::from(address.is_ok()));
                up.insert(labels.clone());
                match &address.result {
                    Ok(success) => {
                        self.target_rtt
                            .get_or_create(&labels)
                            .set(success.connect_rtt.as_secs_f64());
                        rtt.insert(labels.clone());
                        if let (TargetCheck::Nats, Some(info)) = (&report.spec.check, &success.nats)
                        {
                            self.target_nats_jetstream
                                .get_or_create(&labels)
                                .set(i64::from(info.jetstream));
                            jetstream.insert(labels.clone());
                        }
                    }
                    Err(failure) => {
                        let counted = failure_labels(failure.reason);
                        self.target_failures.get_or_create(&counted).inc();
                        failures.insert(counted);
                    }
                }
            }
        }

        // Counters of a target still configured stay (see the module docs).
        let configured: HashSet<&str> = reports.iter().map(|r| r.spec.name.as_str()).collect();
        failures.extend(
            book.target_failures
                .iter()
                .filter(|labels| configured.contains(labels.target.0.as_str()))
                .cloned(),
        );
        remove_departed(&self.target_up, &mut book.target_up, up);
        remove_departed(&self.target_rtt, &mut book.target_rtt, rtt);
        remove_departed(
            &self.target_nats_jetstream,
            &mut book.target_nats_jetstream,
            jetstream,
        );
        remove_departed(&self.target_failures, &mut book.target_failures, failures);
    }
}

/// The reasons a check of one address can fail with (`dns` is the name's, not an
/// address's): the failure series created at 0 for each address.
fn address_failures(check: &TargetCheck) -> &'static [FailureReason] {
    use FailureReason::*;
    match check {
        // A bare connect: nothing is read, so no protocol to get wrong.
        TargetCheck::Tcp => &[Timeout, Refused, Unreachable, Reset],
        TargetCheck::Nats => &[Timeout, Refused, Unreachable, Reset, Protocol],
        TargetCheck::Prometheus | TargetCheck::Http { .. } => {
            &[Timeout, Refused, Unreachable, Reset, Protocol, HttpStatus]
        }
    }
}
