//! Fuzzes placement constraints (`lull_protocol::constraint`): [`Constraint`] and [`Attribute`]
//! read from arbitrary text, [`parse_all`], and [`Constraint::holds`] against an agent's
//! [`Capacity`] built from the input.
//!
//! The input is constraint texts, one a line, then a 0xff byte, then the bytes the `arbitrary`
//! crate makes an agent and the parts of one more constraint from.
//!
//! What must hold, besides never panicking:
//!
//! - an attribute that reads writes back to the same text and reads again the same;
//! - a constraint that reads keeps its text (trimmed), reads again from it to the same
//!   attribute, operator and answers;
//! - `parse_all` fails exactly when one of its constraints does not read;
//! - for one attribute and one value: `==` and `!=` always disagree; `==` holds exactly when
//!   both `>=` and `<=` do; and when the agent has the attribute, `>=` or `<=` holds (values are
//!   ordered); without it (a missing label), only `!=` holds.

#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use lull_protocol::constraint::{Attribute, Constraint, Op, parse_all};
use lull_protocol::message::Capacity;

/// An agent, as the input describes it.
#[derive(Debug, Arbitrary)]
struct Agent {
    cores: u32,
    memory_total: u64,
    os: String,
    arch: String,
    wasmtime: String,
    labels: BTreeMap<String, String>,
}

impl From<Agent> for Capacity {
    fn from(a: Agent) -> Capacity {
        Capacity {
            cores: a.cores,
            memory_total: a.memory_total,
            os: a.os,
            arch: a.arch,
            wasmtime: a.wasmtime,
            labels: a.labels,
            ..Capacity::default()
        }
    }
}

/// A constraint's parts, for the same attribute and value under every comparison.
#[derive(Debug, Arbitrary)]
struct Parts {
    /// `os`, `arch`, `cores`, `memory`, `wasmtime`, or `label.` and this.
    attribute: AttributeText,
    value: String,
}

#[derive(Debug, Arbitrary)]
enum AttributeText {
    Os,
    Arch,
    Cores,
    Memory,
    Wasmtime,
    Label(String),
    Text(String),
}

impl AttributeText {
    fn text(&self) -> String {
        match self {
            AttributeText::Os => "os".into(),
            AttributeText::Arch => "arch".into(),
            AttributeText::Cores => "cores".into(),
            AttributeText::Memory => "memory".into(),
            AttributeText::Wasmtime => "wasmtime".into(),
            AttributeText::Label(k) => format!("label.{k}"),
            AttributeText::Text(t) => t.clone(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Constraint texts, one a line, up to the first 0xff byte (never part of UTF-8); after it,
    // the agent and the parts of one constraint.
    let (texts, rest) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let texts: Vec<String> = String::from_utf8_lossy(texts)
        .lines()
        .map(str::to_owned)
        .collect();
    let mut u = Unstructured::new(rest);
    let (Ok(agent), Ok(parts)) = (Agent::arbitrary(&mut u), Parts::arbitrary(&mut u)) else {
        return;
    };
    let agent = Capacity::from(agent);

    for text in &texts {
        if let Ok(a) = text.parse::<Attribute>() {
            assert_eq!(
                a.to_string(),
                *text,
                "an attribute writes back as it was read"
            );
            assert_eq!(a.to_string().parse::<Attribute>(), Ok(a.clone()));
            let _ = a.value_of(&agent);
        }
        if let Ok(c) = text.parse::<Constraint>() {
            assert_eq!(c.to_string(), text.trim());
            let again: Constraint = c.to_string().parse().expect("reads again from its text");
            assert_eq!(again, c);
            assert_eq!(again.attribute(), c.attribute());
            assert_eq!(again.op(), c.op());
            assert_eq!(again.holds(&agent), c.holds(&agent));
        }
    }
    let all = parse_all(&texts);
    let each = texts.iter().all(|t| t.parse::<Constraint>().is_ok());
    assert_eq!(all.is_ok(), each);
    if let Ok(all) = all {
        assert_eq!(all.len(), texts.len());
    }

    comparisons(&parts, &agent);
});

/// The same attribute and value under `==`, `!=`, `>=` and `<=`.
fn comparisons(parts: &Parts, agent: &Capacity) {
    let attribute = parts.attribute.text();
    let read = |op: Op| -> Option<Constraint> {
        let c: Constraint = format!("{attribute} {op} {}", parts.value).parse().ok()?;
        // Only when the operator read is the one written (the attribute's text may hold one).
        (c.op() == op).then_some(c)
    };
    let (Some(eq), Some(ne), Some(ge), Some(le)) =
        (read(Op::Eq), read(Op::Ne), read(Op::Ge), read(Op::Le))
    else {
        return;
    };
    assert!(
        eq.attribute() == ne.attribute()
            && eq.attribute() == ge.attribute()
            && eq.attribute() == le.attribute()
    );
    let present = eq.attribute().value_of(agent).is_some();
    let [eq, ne, ge, le] = [&eq, &ne, &ge, &le].map(|c| c.holds(agent));
    assert_ne!(eq, ne, "== and != agree on {attribute} {:?}", parts.value);
    assert_eq!(
        eq,
        ge && le,
        "== is >= and <= on {attribute} {:?}",
        parts.value
    );
    if present {
        assert!(
            ge || le,
            "values are ordered: {attribute} {:?}",
            parts.value
        );
    } else {
        assert!(
            !eq && ne && !ge && !le,
            "a missing attribute satisfies only !="
        );
    }
}
