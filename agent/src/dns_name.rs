//! Names as DNS and Kubernetes take them: one set of rules (RFC 1123), checked in one place.
//!
//! A label is 1 to 63 letters, digits and hyphens, neither starting nor ending with a hyphen
//! (RFC 1123 §2.1 allows a leading digit); a name is labels joined by dots, at most 253
//! bytes. Underscores are not hostname characters, and a resolver would be asked for a name
//! no host has. Kubernetes object names (nodes, namespaces) are the lowercase form.

/// Longest name, without the root's trailing dot.
pub const MAX_NAME_LEN: usize = 253;

/// Longest label.
pub const MAX_LABEL_LEN: usize = 63;

fn is_label(label: &str, lowercase_only: bool) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL_LEN
        && label.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || b == b'-'
                || (!lowercase_only && b.is_ascii_uppercase())
        })
        && !label.starts_with('-')
        && !label.ends_with('-')
}

fn is_name(name: &str, lowercase_only: bool) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.split('.').all(|l| is_label(l, lowercase_only))
}

/// A host name to resolve (RFC 1123): labels in any case, optionally fully qualified with a
/// trailing dot, and not made of digits and dots only (`10.0.0.300`, `10.1`: a resolver
/// reads those as addresses in a legacy notation, never as the name meant).
pub fn is_host_name(name: &str) -> bool {
    let bare = name.strip_suffix('.').unwrap_or(name);
    is_name(bare, false) && !bare.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A Kubernetes object name that must be a DNS subdomain (RFC 1123, lowercase), as node
/// names are.
pub fn is_kubernetes_name(name: &str) -> bool {
    is_name(name, true)
}

/// A Kubernetes name that must be one DNS label (RFC 1123, lowercase), as namespaces are.
pub fn is_kubernetes_label(name: &str) -> bool {
    is_label(name, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let longest_label = "a".repeat(63);
        let longest_name = [&"a".repeat(61)[..]; 4].join(".") + ".a"; // 61*4+3+2 = 249
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
            assert!(is_host_name(good), "{good:?} refused");
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
            "a_b",
            "bad host",
            "a!",
            "10.0.0.300",
            "10.1",
            "1",
            &"a".repeat(64),
            &too_long_name,
            "ü.example",
        ] {
            assert!(!is_host_name(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn kubernetes_names() {
        assert!(is_kubernetes_name("gpu-1"));
        assert!(is_kubernetes_name("ip-10-0-0-1.ec2.internal"));
        assert!(is_kubernetes_name("123"));
        for bad in ["GPU_1", "Gpu-1", "gpu-1.", "", "-a", &"a".repeat(254)] {
            assert!(!is_kubernetes_name(bad), "{bad:?} accepted");
        }
        assert!(is_kubernetes_label("monitoring"));
        for bad in ["Monitoring", "a.b", "", "-a", &"a".repeat(64)] {
            assert!(!is_kubernetes_label(bad), "{bad:?} accepted");
        }
    }
}
