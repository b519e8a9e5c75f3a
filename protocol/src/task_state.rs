//! A task's state, as the coordinator stores it and the API shows it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A task's state.
///
/// ```text
///              submit
///                │
///                ▼           assign (persisted)
///   ┌────────► pending ─────────────────────────► running
///   │            │                                  │
///   │            │ cancel                           │ result, or lease lost
///   │            ▼                                  │
///   │        cancelled ◄── job cancelled ───────────┤
///   │                                               ├── succeeded
///   │  evicted, or failed with attempts left        ├── failed (no attempts left)
///   └───────────────────────────────────────────────┘
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for an agent.
    Pending,
    /// Assigned to an agent.
    Running,
    /// Ended well.
    Succeeded,
    /// Ended badly after its last attempt.
    Failed,
    /// Cancelled by a person.
    Cancelled,
}

impl TaskState {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }

    /// Whether the task has ended for good.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a task state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTaskState(pub String);

impl fmt::Display for UnknownTaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown task state {:?}", self.0)
    }
}

impl std::error::Error for UnknownTaskState {}

impl FromStr for TaskState {
    type Err = UnknownTaskState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "pending" => TaskState::Pending,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            other => return Err(UnknownTaskState(other.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in [
            TaskState::Pending,
            TaskState::Running,
            TaskState::Succeeded,
            TaskState::Failed,
            TaskState::Cancelled,
        ] {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(s));
        }
        assert_eq!(
            "done".parse::<TaskState>().unwrap_err().to_string(),
            "unknown task state \"done\""
        );
    }
}
