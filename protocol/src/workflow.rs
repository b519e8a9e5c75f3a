//! Workflow files: jobs submitted together, each starting when the jobs it comes after have
//! succeeded (a map step, then a reduce step that reads the map's outputs).
//!
//! ```toml
//! name = "wordcount"
//!
//! [[job]]
//! name = "map"
//! file = "map.toml"
//!
//! [[job]]
//! name = "reduce"
//! file = "reduce.toml"
//! after = ["map"]
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::job::{JobError, MAX_AFTER};

/// The most jobs one workflow may hold.
pub const MAX_STEPS: usize = 256;

/// A workflow file, as written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WorkflowFile {
    /// A name for people; with the file's place, what a run is recorded under.
    pub name: String,
    /// Its jobs (`[[job]]`), in any order that names each before the jobs that come after it
    /// (or in any order at all: they are sorted).
    #[serde(rename = "job")]
    pub jobs: Vec<Step>,
}

/// One `[[job]]` of a workflow file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Its name in the workflow: what `after` and `[[module.mount]] job` refer to.
    pub name: String,
    /// Its job file, relative to the workflow file.
    pub file: PathBuf,
    /// The jobs that must succeed before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> JobError {
    JobError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}

/// Whether a TOML text is a workflow file (it has `[[job]]` tables) rather than a job file.
pub fn is_workflow(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("job"))
}

impl WorkflowFile {
    /// Parses and checks a workflow file's text. Errors name the line and column, or the field.
    pub fn parse(text: &str) -> Result<Self, JobError> {
        let file: WorkflowFile =
            toml::from_str(text).map_err(|e| JobError::Syntax(e.to_string()))?;
        file.check()?;
        Ok(file)
    }

    /// Checks names (valid, distinct), references (to jobs of the workflow, not to itself) and
    /// that no job comes, through others, after itself.
    pub fn check(&self) -> Result<(), JobError> {
        if self.name.trim().is_empty() || self.name.chars().any(char::is_control) {
            return Err(invalid(
                "name",
                "must not be empty or hold control characters",
            ));
        }
        if self.jobs.is_empty() {
            return Err(invalid("job", "a workflow needs at least one [[job]]"));
        }
        if self.jobs.len() > MAX_STEPS {
            return Err(invalid(
                "job",
                format!("has {} entries; the most is {MAX_STEPS}", self.jobs.len()),
            ));
        }
        let mut index = BTreeMap::new();
        for (i, step) in self.jobs.iter().enumerate() {
            crate::job::check_module_name(&step.name)
                .map_err(|e| invalid(format!("job[{i}].name"), e))?;
            if index.insert(step.name.as_str(), i).is_some() {
                return Err(invalid(
                    format!("job[{i}].name"),
                    format!("{:?} names two jobs; names must differ", step.name),
                ));
            }
        }
        for (i, step) in self.jobs.iter().enumerate() {
            if step.after.len() > MAX_AFTER {
                return Err(invalid(
                    format!("job[{i}].after"),
                    format!("has {} entries; the most is {MAX_AFTER}", step.after.len()),
                ));
            }
            for (j, parent) in step.after.iter().enumerate() {
                if parent == &step.name {
                    return Err(invalid(
                        format!("job[{i}].after"),
                        format!("{parent:?} cannot come after itself"),
                    ));
                }
                if !index.contains_key(parent.as_str()) {
                    return Err(invalid(
                        format!("job[{i}].after"),
                        format!("there is no job {parent:?} in this workflow"),
                    ));
                }
                if step.after[..j].contains(parent) {
                    return Err(invalid(
                        format!("job[{i}].after"),
                        format!("{parent:?} is named twice"),
                    ));
                }
            }
        }
        self.order().map(|_| ())
    }

    /// The jobs in an order that puts each after the jobs it comes after, otherwise as
    /// written; a cycle is an error naming a job in it.
    pub fn order(&self) -> Result<Vec<usize>, JobError> {
        let position: BTreeMap<&str, usize> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect();
        let mut done = vec![false; self.jobs.len()];
        let mut order = Vec::with_capacity(self.jobs.len());
        while order.len() < self.jobs.len() {
            let next = (0..self.jobs.len()).find(|&i| {
                !done[i]
                    && self.jobs[i]
                        .after
                        .iter()
                        .all(|p| position.get(p.as_str()).is_some_and(|&j| done[j]))
            });
            let Some(i) = next else {
                let stuck = (0..self.jobs.len())
                    .find(|&i| !done[i])
                    .map(|i| self.jobs[i].name.clone())
                    .unwrap_or_default();
                return Err(invalid(
                    "job",
                    format!("{stuck:?} comes, through the jobs it comes after, after itself"),
                ));
            };
            done[i] = true;
            order.push(i);
        }
        Ok(order)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WorkflowFile, String> {
        WorkflowFile::parse(text).map_err(|e| e.to_string())
    }

    #[test]
    fn jobs_are_ordered_after_the_jobs_they_come_after() {
        let text = "name = \"w\"\n\
            [[job]]\nname = \"reduce\"\nfile = \"r.toml\"\nafter = [\"map\", \"prepare\"]\n\
            [[job]]\nname = \"map\"\nfile = \"m.toml\"\nafter = [\"prepare\"]\n\
            [[job]]\nname = \"prepare\"\nfile = \"p.toml\"\n";
        assert!(is_workflow(text));
        assert!(!is_workflow(
            "name = \"x\"\n[[module]]\npath = \"a.wasm\"\n"
        ));
        let w = parse(text).unwrap();
        let names: Vec<&str> = w
            .order()
            .unwrap()
            .into_iter()
            .map(|i| w.jobs[i].name.as_str())
            .collect();
        assert_eq!(names, ["prepare", "map", "reduce"]);
    }

    #[test]
    fn mistakes_are_named() {
        let step = |name: &str, after: &str| {
            format!("[[job]]\nname = \"{name}\"\nfile = \"{name}.toml\"\nafter = [{after}]\n")
        };
        for (text, why) in [
            (
                format!("name = \"w\"\n{}{}", step("a", "\"b\""), step("b", "\"a\"")),
                "job: \"a\" comes, through the jobs it comes after, after itself",
            ),
            (
                format!("name = \"w\"\n{}", step("a", "\"a\"")),
                "job[0].after: \"a\" cannot come after itself",
            ),
            (
                format!("name = \"w\"\n{}", step("a", "\"nope\"")),
                "job[0].after: there is no job \"nope\" in this workflow",
            ),
            (
                format!("name = \"w\"\n{}{}", step("a", ""), step("a", "")),
                "job[1].name: \"a\" names two jobs",
            ),
            (format!("name = \"w\"\n{}", step("a/b", "")), "job[0].name:"),
            (
                "name = \"w\"\njob = []\n".to_owned(),
                "at least one [[job]]",
            ),
            (
                format!("name = \"w\"\n{}", step("a", "").replace("file", "path")),
                "unknown field `path`",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }
}
