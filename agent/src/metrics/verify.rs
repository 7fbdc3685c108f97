//! `efa_verify_requests_total{result}`: verifies asked of this agent (`POST /v1/verify`), by
//! what became of them. A rising `rate_limited` is a client looping on it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use strum::VariantArray;

/// The family's name in `# TYPE`; its samples are `<name>_total`.
pub(super) const NAME: &str = "efa_verify_requests";
const HELP: &str = "Verifies asked of this agent (POST /v1/verify), by result (answered; \
                    rate_limited: over the token bucket; busy: too many waiting; bad_request; \
                    unavailable: the monitor did not answer)";

/// What became of one verify request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum VerifyResult {
    Answered,
    RateLimited,
    Busy,
    BadRequest,
    Unavailable,
}

impl VerifyResult {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerifyLabels {
    result: &'static str,
}

/// The counters, shared with the registry; every result's series from the start.
#[derive(Debug, Clone, Default)]
pub struct VerifyRequests {
    family: Family<VerifyLabels, Counter>,
}

impl VerifyRequests {
    pub(super) fn register(register: &mut super::Register<'_>) -> VerifyRequests {
        let requests = VerifyRequests {
            family: register.add(NAME, HELP, None, Family::default()),
        };
        for result in VerifyResult::VARIANTS.iter().copied() {
            let _ = requests.family.get_or_create(&labels(result));
        }
        requests
    }

    pub fn record(&self, result: VerifyResult) {
        self.family.get_or_create(&labels(result)).inc();
    }

    /// The count of `result` so far.
    pub fn get(&self, result: VerifyResult) -> u64 {
        self.family.get_or_create(&labels(result)).get()
    }
}

fn labels(result: VerifyResult) -> VerifyLabels {
    VerifyLabels {
        result: result.as_str(),
    }
}
