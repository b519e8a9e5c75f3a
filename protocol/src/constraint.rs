//! Placement constraints: which agents a job's tasks may run on.
//!
//! A constraint is `ATTRIBUTE OP VALUE`, e.g. `os == linux`, `memory >= 2GiB`,
//! `label.site in lab-3, lab-4` or `arch =~ ^(x86_64|aarch64)$`. Attributes are what an agent
//! reports about itself:
//!
//! | attribute | what | compared as |
//! |---|---|---|
//! | `os` | `linux`, `macos`, `windows` | text |
//! | `arch` | `x86_64`, `aarch64` | text |
//! | `cores` | logical cores | a number |
//! | `memory` | the machine's total memory | a size (`2GiB`, `512MiB`, bytes) |
//! | `wasmtime` | the agent's wasmtime version, e.g. `48.0.1` | a version (`48` < `48.0.1` < `49`) |
//! | `label.KEY` | a label from the agent's configuration | a number when both sides are numbers, else text |
//!
//! Operators: `==`, `!=`, `>=`, `<=`, `in` (a comma-separated list of values), and `=~` (a
//! regular expression that must match somewhere in the value; anchor it with `^...$` to match
//! the whole). An agent without the attribute (a missing label) satisfies only `!=`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::message::Capacity;
use crate::units;

/// Why a constraint could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("constraint {text:?}: {reason}")]
pub struct ConstraintError {
    text: String,
    reason: String,
}

/// An attribute of an agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Attribute {
    /// The operating system.
    Os,
    /// The CPU architecture.
    Arch,
    /// Logical cores.
    Cores,
    /// Total memory in bytes.
    Memory,
    /// The wasmtime version.
    Wasmtime,
    /// A label.
    Label(String),
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Os => f.write_str("os"),
            Attribute::Arch => f.write_str("arch"),
            Attribute::Cores => f.write_str("cores"),
            Attribute::Memory => f.write_str("memory"),
            Attribute::Wasmtime => f.write_str("wasmtime"),
            Attribute::Label(k) => write!(f, "label.{k}"),
        }
    }
}

/// A name that is not an attribute of agents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown attribute {0:?} (known: os, arch, cores, memory, wasmtime, label.KEY)")]
pub struct UnknownAttribute(pub String);

impl FromStr for Attribute {
    type Err = UnknownAttribute;

    fn from_str(s: &str) -> Result<Self, UnknownAttribute> {
        Ok(match s {
            "os" => Attribute::Os,
            "arch" => Attribute::Arch,
            "cores" => Attribute::Cores,
            "memory" => Attribute::Memory,
            "wasmtime" => Attribute::Wasmtime,
            _ => match s.strip_prefix("label.") {
                Some(key) if !key.is_empty() => Attribute::Label(key.to_owned()),
                _ => {
                    return Err(UnknownAttribute(s.to_owned()));
                }
            },
        })
    }
}

impl Attribute {
    /// This attribute's value for an agent, as text; `None` when the agent has no such label.
    pub fn value_of<'a>(&self, agent: &'a Capacity) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        Some(match self {
            Attribute::Os => Cow::Borrowed(agent.os.as_str()),
            Attribute::Arch => Cow::Borrowed(agent.arch.as_str()),
            Attribute::Cores => Cow::Owned(agent.cores.to_string()),
            Attribute::Memory => Cow::Owned(agent.memory_total.to_string()),
            Attribute::Wasmtime => Cow::Borrowed(agent.wasmtime.as_str()),
            Attribute::Label(k) => Cow::Borrowed(agent.labels.get(k)?.as_str()),
        })
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `>=`
    Ge,
    /// `<=`
    Le,
    /// `in`: one of a list.
    In,
    /// `=~`: a regular expression matches.
    Matches,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::In => "in",
            Op::Matches => "=~",
        })
    }
}

/// The right-hand side, read once.
#[derive(Debug, Clone)]
enum Operand {
    /// One value: its text, and as a number when it reads as one for the attribute.
    One { text: String, number: Option<f64> },
    /// `in`'s list.
    List(Vec<String>),
    /// `=~`'s pattern.
    Pattern(regex::Regex),
}

/// One parsed constraint.
#[derive(Debug, Clone)]
pub struct Constraint {
    attribute: Attribute,
    op: Op,
    operand: Operand,
    text: String,
}

impl PartialEq for Constraint {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Reads a value as a number for `attribute`: a size for `memory`, a plain number otherwise.
fn number(attribute: &Attribute, text: &str) -> Option<f64> {
    match attribute {
        Attribute::Memory => units::parse_size(text).ok().map(|b| b as f64),
        _ => text.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
    }
}

/// Compares dotted versions numerically, part by part (`48` < `48.0.1` < `49`; a part that is
/// not a number compares as text).
fn compare_versions(a: &str, b: &str) -> Ordering {
    let mut left = a.split(['.', '-', '+']);
    let mut right = b.split(['.', '-', '+']);
    loop {
        match (left.next(), right.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(p), Ok(q)) => p.cmp(&q),
                    _ => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

impl FromStr for Constraint {
    type Err = ConstraintError;

    fn from_str(text: &str) -> Result<Self, ConstraintError> {
        let fail = |reason: String| ConstraintError {
            text: text.to_owned(),
            reason,
        };
        // Operators, the two-character ones first; `in` must stand between spaces.
        let found = ["==", "!=", ">=", "<=", "=~"]
            .iter()
            .filter_map(|op| text.find(op).map(|at| (at, *op, op.len())))
            .chain(text.find(" in ").map(|at| (at, "in", 4)))
            .min_by_key(|(at, _, _)| *at);
        let Some((at, op, len)) = found else {
            return Err(fail(
                "expected ATTRIBUTE OP VALUE with OP one of ==, !=, >=, <=, in, =~ (e.g. \"os == linux\")"
                    .into(),
            ));
        };
        let attribute: Attribute = text[..at]
            .trim()
            .parse()
            .map_err(|e: UnknownAttribute| fail(e.to_string()))?;
        let value = text[at + len..].trim();
        if value.is_empty() {
            return Err(fail("the value is missing".into()));
        }
        let op = match op {
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            "=~" => Op::Matches,
            _ => Op::In,
        };
        let operand = match op {
            Op::In => {
                let items: Vec<String> = value
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .split(',')
                    .map(|s| s.trim().trim_matches('"').to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                if items.is_empty() {
                    return Err(fail("`in` needs a comma-separated list of values".into()));
                }
                Operand::List(items)
            }
            Op::Matches => {
                let pattern = regex::RegexBuilder::new(value)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| fail(format!("not a regular expression: {e}")))?;
                Operand::Pattern(pattern)
            }
            _ => {
                let value = value.trim_matches('"').to_owned();
                let number = number(&attribute, &value);
                let numeric = matches!(attribute, Attribute::Cores | Attribute::Memory);
                if numeric && number.is_none() {
                    return Err(fail(format!(
                        "{attribute} compares with a {} (e.g. {}), not {value:?}",
                        if attribute == Attribute::Memory {
                            "size"
                        } else {
                            "number"
                        },
                        if attribute == Attribute::Memory {
                            "2GiB"
                        } else {
                            "4"
                        }
                    )));
                }
                Operand::One {
                    text: value,
                    number,
                }
            }
        };
        Ok(Constraint {
            attribute,
            op,
            operand,
            text: text.trim().to_owned(),
        })
    }
}

impl Constraint {
    /// The attribute it tests.
    pub fn attribute(&self) -> &Attribute {
        &self.attribute
    }

    /// The operator.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Whether an agent reporting `agent` satisfies it.
    pub fn holds(&self, agent: &Capacity) -> bool {
        let Some(have) = self.attribute.value_of(agent) else {
            return self.op == Op::Ne;
        };
        match &self.operand {
            Operand::List(items) => items.iter().any(|i| *i == have),
            Operand::Pattern(p) => p.is_match(&have),
            Operand::One { text, number: want } => {
                let order = match (want, number(&self.attribute, &have)) {
                    (Some(w), Some(h)) => h.partial_cmp(w).unwrap_or(Ordering::Equal),
                    _ if self.attribute == Attribute::Wasmtime => compare_versions(&have, text),
                    _ => have.as_ref().cmp(text.as_str()),
                };
                match self.op {
                    Op::Eq => order == Ordering::Equal,
                    Op::Ne => order != Ordering::Equal,
                    Op::Ge => order != Ordering::Less,
                    Op::Le => order != Ordering::Greater,
                    Op::In | Op::Matches => unreachable!("their operands are a list and a pattern"),
                }
            }
        }
    }
}

/// Parses a job's constraints, naming the first bad one.
pub fn parse_all(texts: &[String]) -> Result<Vec<Constraint>, ConstraintError> {
    texts.iter().map(|t| t.parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> Capacity {
        Capacity {
            cores: 8,
            memory_total: 16 << 30,
            os: "linux".into(),
            arch: "x86_64".into(),
            wasmtime: "48.0.1".into(),
            labels: [
                ("site".into(), "lab-3".into()),
                ("rack".into(), "12".into()),
            ]
            .into_iter()
            .collect(),
            ..Capacity::default()
        }
    }

    fn holds(text: &str) -> bool {
        text.parse::<Constraint>()
            .unwrap_or_else(|e| panic!("{e}"))
            .holds(&agent())
    }

    #[test]
    fn each_operator_over_each_kind_of_attribute() {
        assert!(holds("os == linux"));
        assert!(holds("os==linux"));
        assert!(!holds("os == macos"));
        assert!(holds("os != windows"));
        assert!(holds("arch in x86_64, aarch64"));
        assert!(holds("arch in [\"aarch64\", \"x86_64\"]"));
        assert!(!holds("arch in aarch64"));
        assert!(holds("cores >= 8"));
        assert!(!holds("cores >= 9"));
        assert!(holds("cores <= 8"));
        assert!(holds("memory >= 2GiB"));
        assert!(holds("memory == 16GiB"));
        assert!(!holds("memory >= 17GiB"));
        assert!(holds("memory <= 17179869184"));
        assert!(holds("label.site == lab-3"));
        assert!(
            holds("label.rack >= 9"),
            "numbers compare as numbers, not text"
        );
        assert!(holds("label.site =~ ^lab-[0-9]+$"));
        assert!(!holds("label.site =~ ^lab-[4-9]$"));
        assert!(
            holds("label.site =~ b-3"),
            "unanchored: anywhere in the value"
        );
        assert!(holds("wasmtime >= 48"));
        assert!(holds("wasmtime >= 48.0.1"));
        assert!(!holds("wasmtime >= 48.1"));
        assert!(holds("wasmtime <= 100"), "versions compare part by part");
    }

    #[test]
    fn a_missing_label_satisfies_only_not_equal() {
        assert!(!holds("label.gpu == yes"));
        assert!(!holds("label.gpu in yes, no"));
        assert!(!holds("label.gpu =~ ."));
        assert!(!holds("label.gpu >= 1"));
        assert!(holds("label.gpu != yes"));
    }

    #[test]
    fn bad_constraints_say_what_is_wrong() {
        for (text, says) in [
            ("os linux", "expected ATTRIBUTE OP VALUE"),
            ("colour == red", "unknown attribute \"colour\""),
            ("label. == x", "unknown attribute"),
            ("os == ", "the value is missing"),
            ("memory >= lots", "memory compares with a size"),
            ("cores >= many", "cores compares with a number"),
            ("os =~ (", "not a regular expression"),
            ("arch in ,", "comma-separated list"),
        ] {
            let err = text.parse::<Constraint>().expect_err(text).to_string();
            assert!(err.contains(says), "{text}: {err}");
            assert!(
                err.contains(&format!("{text:?}")),
                "names the constraint: {err}"
            );
        }
    }
}
