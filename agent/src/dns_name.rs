//! Names as DNS and Kubernetes take them: one check, [`is_dns_name`], with the rules each
//! caller needs named where it calls.
//!
//! Common to all (RFC 1123 §2.1, RFC 1035 §2.3.4): a label is 1 to 63 characters, letters,
//! digits and hyphens (a leading digit allowed), neither starting nor ending with a hyphen; a
//! name is labels joined by dots, at most 253 bytes. The rules differ only in what else they
//! take: see [`NameRules`].

/// Longest name, without the root's trailing dot.
pub const MAX_NAME_LEN: usize = 253;

/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;

/// Which names a setting or a message may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRules {
    /// A host name (RFC 1123): letters in any case, a trailing dot allowed (fully qualified),
    /// and not digits and dots only (`10.0.0.300`, `10.1`: a resolver reads those as an
    /// address in a legacy notation, never as the name meant). Peers, the instance-metadata
    /// endpoint, the headless Service of DNS discovery.
    HostName,
    /// A host name, underscores allowed too: DNS itself allows them (RFC 2181 §11), resolvers
    /// answer for them and real zones have them (`host_name.example`). Targets, which name
    /// whatever service an operator checks.
    Resolvable,
    /// A Kubernetes object name that is a DNS subdomain (lowercase, no trailing dot; digits
    /// alone allowed): node names, label-key prefixes.
    KubernetesName,
    /// A Kubernetes name that is one DNS label (lowercase): namespaces.
    KubernetesLabel,
}

/// Whether `name` follows `rules`.
pub fn is_dns_name(name: &str, rules: NameRules) -> bool {
    let kubernetes = matches!(
        rules,
        NameRules::KubernetesName | NameRules::KubernetesLabel
    );
    let bare = if kubernetes {
        name
    } else {
        name.strip_suffix('.').unwrap_or(name)
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || (!kubernetes && b.is_ascii_uppercase())
                    || (rules == NameRules::Resolvable && b == b'_')
            })
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let shape_ok = match rules {
        NameRules::KubernetesLabel => label_ok(bare),
        _ => !bare.is_empty() && bare.len() <= MAX_NAME_LEN && bare.split('.').all(label_ok),
    };
    shape_ok && (kubernetes || !bare.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

#[cfg(test)]
mod tests {
    use super::NameRules::*;
    use super::*;

    #[test]
    fn host_names() {
        let longest_label = "a".repeat(63);
        let longest_name = [&"a".repeat(61)[..]; 4].join(".") + ".a"; // 249 bytes
        for good in [
            "nats",
            "nats.system.svc.cluster.local",
            "nats.system.svc.cluster.local.",
            "Node-B",
            "3com.example",
            "ip-10-0-0-1.ec2.internal",
            &longest_label,
            &longest_name,
        ] {
            assert!(is_dns_name(good, HostName), "{good:?} refused");
            assert!(is_dns_name(good, Resolvable), "{good:?} refused");
        }
        let too_long_name = [&"a".repeat(63)[..]; 4].join(".");
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "-a",
            "a-",
            "a.-b",
            "bad host",
            "a!",
            "10.0.0.300",
            "10.1",
            "1",
            &"a".repeat(64),
            &too_long_name,
            "ü.example",
        ] {
            assert!(!is_dns_name(bad, HostName), "{bad:?} accepted");
            assert!(!is_dns_name(bad, Resolvable), "{bad:?} accepted");
        }
        // Underscores: a name to resolve, not a host name.
        assert!(is_dns_name("host_name.example", Resolvable));
        assert!(!is_dns_name("host_name.example", HostName));
    }

    #[test]
    fn kubernetes_names() {
        for good in ["gpu-1", "ip-10-0-0-1.ec2.internal", "123", "a.b"] {
            assert!(is_dns_name(good, KubernetesName), "{good:?} refused");
        }
        for bad in [
            "GPU_1",
            "gpu_1",
            "Gpu-1",
            "gpu-1.",
            "",
            "-a",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_name(bad, KubernetesName), "{bad:?} accepted");
        }
        assert!(is_dns_name("monitoring", KubernetesLabel));
        for bad in ["Monitoring", "a.b", "", "-a", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_name(bad, KubernetesLabel), "{bad:?} accepted");
        }
    }
}
