//! `nat-type --every SECS`: what changed between two runs, in the few fields people watch
//! (public address, verdicts, port mapping, difficulty). Pure: the command compares the snapshots
//! of two reports and prints one line per run.

use std::fmt;

use serde::Serialize;

/// The watched fields of one run, as text (the way they are printed and compared).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub fields: Vec<(Field, String)>,
}

/// A watched field; the JSON name of each is its `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// The IPv4 public address's IP (the port changes with every fresh socket, so it is left out).
    PublicIp,
    NatType,
    Ipv6PublicIp,
    Ipv6NatType,
    /// Which protocols mapped a port (`upnp+nat_pmp+pcp`, `none`).
    PortMapping,
    Difficulty,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::PublicIp => "public_ip",
            Field::NatType => "nat_type",
            Field::Ipv6PublicIp => "ipv6_public_ip",
            Field::Ipv6NatType => "ipv6_nat_type",
            Field::PortMapping => "port_mapping",
            Field::Difficulty => "difficulty",
        }
    }
}

/// One field that differs from the previous run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub field: Field,
    pub from: String,
    pub to: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} → {}", self.field.as_str(), self.from, self.to)
    }
}

impl Snapshot {
    pub fn get(&self, field: Field) -> Option<&str> {
        self.fields.iter().find(|(f, _)| *f == field).map(|(_, v)| v.as_str())
    }

    /// What differs from `before` (a field absent on one side counts as "unknown").
    pub fn changes_since(&self, before: &Snapshot) -> Vec<Change> {
        self.fields
            .iter()
            .filter_map(|(field, to)| {
                let from = before.get(*field).unwrap_or("unknown");
                (from != to).then(|| Change { field: *field, from: from.to_string(), to: to.clone() })
            })
            .collect()
    }

    /// The first run's line: every field.
    pub fn summary(&self) -> String {
        self.fields.iter().map(|(f, v)| format!("{} {v}", f.as_str())).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(public: &str, nat: &str) -> Snapshot {
        Snapshot {
            fields: vec![
                (Field::PublicIp, public.into()),
                (Field::NatType, nat.into()),
                (Field::PortMapping, "none".into()),
            ],
        }
    }

    #[test]
    fn only_the_fields_that_differ_are_reported() {
        let a = snap("203.0.113.11", "port-restricted-cone");
        let b = snap("203.0.113.11", "symmetric");
        assert_eq!(
            b.changes_since(&a),
            vec![Change { field: Field::NatType, from: "port-restricted-cone".into(), to: "symmetric".into() }]
        );
        assert!(a.changes_since(&a.clone()).is_empty());
        assert_eq!(b.changes_since(&a)[0].to_string(), "nat_type port-restricted-cone → symmetric");
        assert_eq!(a.summary(), "public_ip 203.0.113.11, nat_type port-restricted-cone, port_mapping none");
    }
}
