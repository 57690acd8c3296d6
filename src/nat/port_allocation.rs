//! How a NAT picks public ports for new mappings (RFC 4787 §4.2.1, port
//! preservation; RFC 5780 §4.3 leaves prediction out). Port prediction for
//! hole punching needs exactly this: the mapped ports of N fresh sockets,
//! opened one after another, and the pattern they follow.

use serde::Serialize;

/// One fresh socket: its local port and the port the NAT mapped it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortSample {
    pub local: u16,
    pub mapped: u16,
}

/// The pattern of mapped ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "pattern")]
pub enum PortPattern {
    /// Every mapped port equals its local port.
    Preserving,
    /// Each new mapping is the previous one plus `step` (a predictable NAT).
    Sequential { step: i32 },
    /// No pattern: predicting the next port needs the birthday method.
    Random,
}

/// The largest step still called sequential: NATs that allocate in order move
/// by 1 or a small stride; anything wider is indistinguishable from chance.
pub const MAX_SEQUENTIAL_STEP: i32 = 16;

/// Finds the pattern in samples taken in the order the sockets were opened.
/// Needs at least two samples; None otherwise.
pub fn pattern(samples: &[PortSample]) -> Option<PortPattern> {
    if samples.len() < 2 {
        return None;
    }
    if samples.iter().all(|s| s.local == s.mapped) {
        return Some(PortPattern::Preserving);
    }
    let steps: Vec<i32> = samples.windows(2).map(|w| w[1].mapped as i32 - w[0].mapped as i32).collect();
    let first = steps[0];
    if first != 0 && first.abs() <= MAX_SEQUENTIAL_STEP && steps.iter().all(|&s| s == first) {
        return Some(PortPattern::Sequential { step: first });
    }
    Some(PortPattern::Random)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pairs: &[(u16, u16)]) -> Vec<PortSample> {
        pairs.iter().map(|&(local, mapped)| PortSample { local, mapped }).collect()
    }

    #[test]
    fn preserved_ports_are_preserving() {
        assert_eq!(pattern(&s(&[(40000, 40000), (40007, 40007), (39000, 39000)])), Some(PortPattern::Preserving));
    }

    #[test]
    fn a_constant_small_step_is_sequential() {
        assert_eq!(pattern(&s(&[(1, 5000), (2, 5001), (3, 5002)])), Some(PortPattern::Sequential { step: 1 }));
        assert_eq!(pattern(&s(&[(1, 5000), (2, 4998), (3, 4996)])), Some(PortPattern::Sequential { step: -2 }));
    }

    #[test]
    fn anything_else_is_random() {
        assert_eq!(pattern(&s(&[(1, 5000), (2, 61234), (3, 1999)])), Some(PortPattern::Random));
        assert_eq!(pattern(&s(&[(1, 5000), (2, 5000), (3, 5000)])), Some(PortPattern::Random));
        assert_eq!(pattern(&s(&[(1, 5000), (2, 5100), (3, 5200)])), Some(PortPattern::Random));
    }

    #[test]
    fn one_sample_has_no_pattern() {
        assert_eq!(pattern(&s(&[(1, 1)])), None);
        assert_eq!(
            serde_json::to_value(PortPattern::Sequential { step: 2 }).expect("json"),
            serde_json::json!({"pattern": "sequential", "step": 2})
        );
    }
}
