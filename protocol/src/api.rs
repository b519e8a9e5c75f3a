//! The coordinator's HTTP API (`/api/v1`): the documents its routes take and answer with,
//! shared by the coordinator, which writes them, and `lull`, which reads them. The routes and
//! their errors are described in `docs/api.md` and served as OpenAPI at
//! `/api/v1/openapi.json`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Digest;
use crate::job::JobSpec;
use crate::message::{AgentState, AgentStatus, AttemptId, Capacity, TaskId, TaskResult};

pub use crate::task_state::{TaskState, UnknownTaskState};

/// `GET /api/v1/info`: what the coordinator is and asks of submitters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// Its version.
    pub version: String,
    /// The agent protocol version it speaks.
    pub protocol_version: u32,
    /// Whether it is a development cluster (`lull dev`).
    pub dev: bool,
    /// Whether modules must be signed by a trusted key.
    pub requires_signatures: bool,
}

/// What a person's token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submit jobs; see, cancel, delete and download only one's own.
    Submit,
    /// See everything; change nothing.
    Read,
    /// Everything: every job, agents (drain, revoke), clusters, tokens.
    Operate,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Submit, Role::Read, Role::Operate];

    /// Its name, as tokens store it and people write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submit => "submit",
            Role::Read => "read",
            Role::Operate => "operate",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a role: submit, read or operate"))
    }
}

/// The longest user name.
pub const MAX_USER_NAME: usize = 64;

/// Checks a user's name: 1 to [`MAX_USER_NAME`] letters, digits and `.`, `_`, `-`, `@`,
/// starting with a letter or digit (it appears in lists, metrics labels and logs).
pub fn check_user_name(name: &str) -> Result<(), String> {
    check_name("user", name)
}

/// Checks a group's name: the same rule as a user's ([`check_user_name`]). In a quota a group
/// is written `@name`, which no user's name can be.
pub fn check_group_name(name: &str) -> Result<(), String> {
    check_name("group", name)
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a {what} name: 1 to {MAX_USER_NAME} letters, digits, '.', '_', '-' \
             and '@', starting with a letter or digit"
        ))
    }
}

/// How a group is written where users are named too (quotas): `@name`.
pub const GROUP_PREFIX: char = '@';

/// `GET /api/v1/me`: whom the request's token belongs to and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    /// The user's name.
    pub user: String,
    /// The token's role.
    pub role: Role,
    /// The clusters the token is limited to; `None`: every cluster.
    pub clusters: Option<Vec<String>>,
    /// The groups the user's jobs may be counted in (the first is the default).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `GET /api/v1/shares`: one user's standing in one cluster's fair share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Share {
    /// The cluster.
    pub cluster: String,
    /// The user.
    pub user: String,
    /// Cores their running tasks reserve now.
    pub running_cores: f64,
    /// Cores held recently (smoothed with the coordinator's half-life): the lower, the sooner
    /// served.
    pub recent_cores: f64,
    /// Core-seconds used, decayed with the half-life.
    pub usage_core_seconds: f64,
    /// Tasks waiting.
    pub waiting: u64,
}

/// `GET /api/v1/accounting`: core-seconds of guest CPU harvested, per user whose tasks used
/// them and per lender whose agents gave them, largest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accounting {
    /// Per user.
    pub users: Vec<Usage>,
    /// Per lender (the owner an agent's join token named).
    pub lenders: Vec<Usage>,
}

/// One total of [`Accounting`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The user or lender.
    pub name: String,
    /// Core-seconds of guest CPU.
    pub core_seconds: f64,
}

/// `GET /api/v1/clusters/{id}/quotas`: what one user (or `*`, everyone without their own), or
/// the jobs of one group (`@name`), may run at once in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    /// The user, `*`, or a group as `@name`.
    pub user: String,
    /// Tasks running at once; `None`: no limit.
    pub max_tasks: Option<u32>,
    /// Cores reserved at once (the tasks' `cpu`); `None`: no limit.
    pub max_cores: Option<f64>,
}

/// `PUT /api/v1/clusters/{id}/quotas/{user}`: the limits to set (both `None` removes the quota).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetQuota {
    /// Tasks running at once.
    #[serde(default)]
    pub max_tasks: Option<u32>,
    /// Cores reserved at once.
    #[serde(default)]
    pub max_cores: Option<f64>,
}

/// `POST /api/v1/tokens`: a token to make. With `user`, a person's token of that user with
/// `role` (default `submit`), perhaps limited to `clusters`; without, an agent's join token into
/// `cluster` (default `default`) for machines lent by `owner`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A person's token: whose.
    #[serde(default)]
    pub user: Option<String>,
    /// A person's token: what it may do [default: submit].
    #[serde(default)]
    pub role: Option<Role>,
    /// A person's token: the clusters it is limited to [default: every cluster].
    #[serde(default)]
    pub clusters: Vec<String>,
    /// A person's token: the groups its jobs may be counted in, for group quotas; the first
    /// is the default of jobs that name none [default: none].
    #[serde(default)]
    pub groups: Vec<String>,
    /// An agent's join token: whose machines it enrolls.
    #[serde(default)]
    pub owner: Option<String>,
    /// An agent's join token: the cluster it enrolls into [default: default].
    #[serde(default)]
    pub cluster: Option<String>,
    /// How long it works, in ms; 0 for ever [default: 24 h for an agent's token, 90 days for a
    /// person's].
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// How many enrollments (an agent's) or submissions (a person's) it allows; 0 for any
    /// number [default: 1 for an agent's token, any number for a person's].
    #[serde(default)]
    pub uses: Option<u32>,
    /// A note for people.
    #[serde(default)]
    pub description: String,
}

/// A token as listed: never the secret itself (`GET /api/v1/tokens`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// The first 12 hex digits of the token's sha256, to tell tokens apart.
    pub id: String,
    /// `agent` or `submitter` (a person's).
    pub kind: String,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it stops working.
    pub expires_ms: Option<i64>,
    /// Uses left; `None`: unlimited.
    pub uses_left: Option<i64>,
    /// The note given when it was made.
    pub description: String,
    /// The cluster an agent's join token enrolls into.
    pub cluster: String,
    /// A person's token: whose; an agent's: the lender of the machines it enrolls.
    pub user: String,
    /// A person's token: its role.
    pub role: String,
    /// A person's token: the clusters it is limited to (empty: every cluster).
    pub clusters: Vec<String>,
    /// A person's token: the groups its jobs may be counted in (the first is the default).
    #[serde(default)]
    pub groups: Vec<String>,
}

impl TokenInfo {
    /// Whether it is a person's token (not an agent's join token).
    pub fn is_persons(&self) -> bool {
        self.kind != "agent"
    }

    /// Where it reaches, for lists: an agent's token its cluster, a person's its clusters or
    /// `all`.
    pub fn reach(&self) -> String {
        match (self.is_persons(), self.clusters.is_empty()) {
            (false, _) => self.cluster.clone(),
            (true, true) => "all".to_owned(),
            (true, false) => self.clusters.join(","),
        }
    }

    /// Its groups, for lists: comma-separated, or `-`.
    pub fn groups_shown(&self) -> String {
        if self.groups.is_empty() {
            "-".to_owned()
        } else {
            self.groups.join(",")
        }
    }

    /// What it is, in words: `a token of alice with the role read, limited to cluster(s) lab`
    /// or `an agent's join token for cluster gpu, for machines lent by carol`.
    pub fn describe(&self) -> String {
        if self.is_persons() {
            let limit = if self.clusters.is_empty() {
                String::new()
            } else {
                format!(", limited to cluster(s) {}", self.clusters.join(", "))
            };
            let groups = if self.groups.is_empty() {
                String::new()
            } else {
                format!(", in group(s) {}", self.groups.join(", "))
            };
            format!(
                "a token of {} with the role {}{limit}{groups}",
                self.user, self.role
            )
        } else if self.user.is_empty() {
            format!("an agent's join token for cluster {}", self.cluster)
        } else {
            format!(
                "an agent's join token for cluster {}, for machines lent by {}",
                self.cluster, self.user
            )
        }
    }
}

/// The answer to `DELETE /api/v1/tokens/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokensDeleted {
    /// How many tokens were deleted.
    pub deleted: u64,
}

/// The answer to [`NewToken`]: the token, shown this once, and how it is listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// The token itself.
    pub token: String,
    /// The token as `GET /api/v1/tokens` lists it.
    pub info: TokenInfo,
}

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable code (`not_found`, `bad_request`, ...).
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// `POST /api/v1/blobs/missing`: which of these blobs the coordinator lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingRequest {
    /// The blobs a job will refer to.
    pub digests: Vec<Digest>,
}

/// The answer to [`MissingRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing {
    /// The blobs to upload.
    pub missing: Vec<Digest>,
}

/// `POST /api/v1/uploads`: starts (or finds) the resumable upload of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartUpload {
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The bytes received so far: where the next chunk starts.
    pub offset: u64,
    /// Whether the blob is whole and checked.
    pub complete: bool,
    /// The largest chunk the coordinator takes.
    pub max_chunk: u64,
}

/// `PUT /api/v1/blobs/{digest}`: a blob stored whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobStored {
    /// The blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

/// `POST /api/v1/jobs`: the job's number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The job.
    pub job: u64,
}

/// Task counts by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Waiting for an agent.
    pub pending: u64,
    /// On an agent.
    pub running: u64,
    /// Done well.
    pub succeeded: u64,
    /// Done badly.
    pub failed: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl Counts {
    /// Counts `n` more tasks in `state`.
    pub fn add(&mut self, state: TaskState, n: u64) {
        match state {
            TaskState::Pending => self.pending += n,
            TaskState::Running => self.running += n,
            TaskState::Succeeded => self.succeeded += n,
            TaskState::Failed => self.failed += n,
            TaskState::Cancelled => self.cancelled += n,
        }
    }

    /// All tasks.
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.succeeded + self.failed + self.cancelled
    }
}

/// A job's overall state, from its tasks'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waits for the jobs it comes after to succeed (or, when one did not, for good); none of
    /// its tasks has started.
    Held,
    /// Tasks wait, none runs.
    Pending,
    /// Tasks run.
    Running,
    /// Cancelled, with tasks still stopping.
    Cancelling,
    /// Every task succeeded.
    Succeeded,
    /// Ended, with a task failed.
    Failed,
    /// Ended, with a task cancelled.
    Cancelled,
}

impl JobState {
    /// The state of a job with these counts: running while any task runs (cancelling if the
    /// job was cancelled), else pending while any task waits, else cancelled if any task was
    /// cancelled, else failed if any failed, else succeeded.
    pub fn of(c: &Counts, cancelled: bool) -> Self {
        if c.running > 0 {
            if cancelled {
                JobState::Cancelling
            } else {
                JobState::Running
            }
        } else if c.pending > 0 {
            JobState::Pending
        } else if c.cancelled > 0 {
            JobState::Cancelled
        } else if c.failed > 0 {
            JobState::Failed
        } else {
            JobState::Succeeded
        }
    }

    /// Its name, e.g. `cancelling`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Held => "held",
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Cancelling => "cancelling",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// The state of a job with these counts that may be held: held while it is and not
    /// cancelled, else [`JobState::of`].
    pub fn of_held(c: &Counts, cancelled: bool, held: bool) -> Self {
        if held && !cancelled && c.pending > 0 {
            JobState::Held
        } else {
            JobState::of(c, cancelled)
        }
    }

    /// Whether the job has ended: nothing of it waits or runs.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /api/v1/jobs`: one job of the list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    /// Its number.
    pub id: u64,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: JobState,
    /// How many tasks it has.
    pub count: u32,
    /// Its tasks by state.
    pub counts: Counts,
    /// When it was submitted (ms since the Unix epoch).
    pub created_ms: i64,
    /// The user who submitted it (empty from coordinators older than users).
    #[serde(default)]
    pub owner: String,
}

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    /// The task.
    #[serde(flatten)]
    pub id: TaskId,
    /// Its state.
    pub state: TaskState,
    /// The current or last attempt (0 before the first).
    pub attempt: u32,
    /// The agent of the current or last attempt.
    pub agent: Option<String>,
    /// Why it failed or was cancelled; for a task that took a cached result, where from
    /// (`cached: the result of task 12/3 (attempt 1)`).
    pub cause: Option<String>,
}

/// A task of [`JobDetail`]: as stored, with its last result and how far it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task.
    #[serde(flatten)]
    pub task: Task,
    /// The last result its agents sent.
    pub result: Option<TaskResult>,
    /// While it runs but waits on its agent (for a slot, or memory): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// How far its guest got (0..=1): as reported now, never less than its latest checkpoint.
    pub progress: Option<f64>,
}

/// `GET /api/v1/jobs/{id}`: a job with its definition and a page of its tasks (see
/// [`TaskQuery`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDetail {
    /// What the list of jobs shows of it.
    #[serde(flatten)]
    pub job: JobSummary,
    /// While tasks wait: why, in words.
    pub waiting_reason: Option<String>,
    /// For a job held for good (a job it comes after did not succeed): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// Its definition.
    pub spec: JobSpec,
    /// The page of its tasks asked for, by index.
    pub tasks: Vec<TaskView>,
    /// When tasks asked for follow this page: the index of the next one, which is the `offset`
    /// of the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u32>,
}

/// The query of `GET /api/v1/jobs/{id}`: which of the job's tasks its detail holds. The tasks
/// whose index is at least `offset`, in index order, only those in `state` when it is given,
/// at most `limit` of them (0 for none: the job's summary, definition and counts alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskQuery {
    /// The first task index to look at.
    pub offset: u32,
    /// The most tasks to answer with, at most [`TaskQuery::MAX_LIMIT`].
    pub limit: u32,
    /// Only tasks in this state.
    pub state: Option<TaskState>,
}

impl Default for TaskQuery {
    fn default() -> Self {
        Self {
            offset: 0,
            limit: Self::DEFAULT_LIMIT,
            state: None,
        }
    }
}

/// A query parameter of [`TaskQuery`] that cannot be taken; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadTaskQuery {
    /// `offset` or `limit` is not a number of the right size.
    #[error("{name}: {value:?} is not a number from 0 to {max}")]
    NotANumber {
        /// The parameter.
        name: &'static str,
        /// What it was given.
        value: String,
        /// The largest it may be.
        max: u32,
    },
    /// `state` is not a task state.
    #[error("state: {0:?} is not a task state (pending, running, succeeded, failed or cancelled)")]
    State(String),
    /// A parameter given twice.
    #[error("{0}: given twice")]
    Repeated(String),
    /// A parameter the route does not take.
    #[error("{0}: not a parameter of this route (it takes offset, limit and state)")]
    Unknown(String),
}

impl TaskQuery {
    /// How many tasks a page holds when `limit` is not given.
    pub const DEFAULT_LIMIT: u32 = 1_000;
    /// The most tasks a page holds.
    pub const MAX_LIMIT: u32 = 10_000;

    /// Reads the query's parameters, decoded, in the order given.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, BadTaskQuery> {
        let mut q = Self::default();
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in pairs {
            if seen.contains(&name) {
                return Err(BadTaskQuery::Repeated(name.to_owned()));
            }
            seen.push(name);
            let number = |name: &'static str, max: u32| {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| BadTaskQuery::NotANumber {
                        name,
                        value: value.to_owned(),
                        max,
                    })
            };
            match name {
                "offset" => q.offset = number("offset", u32::MAX)?,
                "limit" => q.limit = number("limit", Self::MAX_LIMIT)?,
                "state" => {
                    q.state = Some(
                        value
                            .parse()
                            .map_err(|_| BadTaskQuery::State(value.to_owned()))?,
                    )
                }
                other => return Err(BadTaskQuery::Unknown(other.to_owned())),
            }
        }
        Ok(q)
    }

    /// The query string that asks for this, `?` included; empty for the default.
    pub fn to_query_string(&self) -> String {
        let mut parts = Vec::new();
        if self.offset != 0 {
            parts.push(format!("offset={}", self.offset));
        }
        if self.limit != Self::DEFAULT_LIMIT {
            parts.push(format!("limit={}", self.limit));
        }
        if let Some(state) = self.state {
            parts.push(format!("state={state}"));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!("?{}", parts.join("&"))
        }
    }
}

/// One attempt of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The attempt number.
    pub attempt: u32,
    /// The agent it ran on.
    pub agent: String,
    /// When it was assigned.
    pub assigned_ms: i64,
    /// When its guest started.
    pub started_ms: Option<i64>,
    /// Microseconds from the assignment reaching the agent to its guest running.
    pub setup_us: Option<i64>,
    /// When it ended.
    pub finished_ms: Option<i64>,
    /// How it ended, in words (`succeeded`, `lost: ...`, a cause...).
    pub outcome: Option<String>,
    /// Its result, when the agent sent one.
    pub result: Option<TaskResult>,
}

/// The latest checkpoint a task kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Its state blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The attempt that kept it.
    pub attempt: u32,
    /// The progress its guest reported with it.
    pub progress: Option<f64>,
}

/// `GET /api/v1/jobs/{id}/tasks/{index}/live`: what a running module of a task has written so
/// far to one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveLog {
    /// The task's current attempt (0 before its first).
    pub attempt: u32,
    /// Whether the module runs now on an agent connected to this coordinator; when not, its
    /// streams come with the attempt's result (`lull logs` without `-f`).
    pub running: bool,
    /// What it wrote from the offset asked for, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<crate::message::LiveOutput>,
}

/// `GET /api/v1/jobs/{id}/tasks/{index}`: a task with every attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDetail {
    /// The task.
    pub task: Task,
    /// Its attempts, first first.
    pub attempts: Vec<Attempt>,
    /// Its latest checkpoint.
    pub checkpoint: Option<Checkpoint>,
}

/// `DELETE /api/v1/jobs/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// The job.
    pub job: u64,
    /// Always true.
    pub deleted: bool,
}

/// `POST /api/v1/jobs/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    /// The job.
    pub job: u64,
    /// How many of its tasks were running and are being stopped.
    pub stopping: usize,
}

/// `GET /api/v1/agents`: one connected agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// Its ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it offers.
    pub capacity: Capacity,
    /// Its policy's view: accepting work or not, and why.
    pub status: AgentStatus,
    /// Attempts running on it.
    pub running: usize,
    /// When it connected (ms since the Unix epoch).
    pub connected_ms: i64,
    /// While it is being drained: when its running attempts are evicted.
    pub draining_until_ms: Option<i64>,
    /// The cluster it belongs to.
    pub cluster: String,
    /// Blobs it downloaded on this connection.
    pub blobs_served: u64,
    /// The bytes of those blobs.
    pub bytes_served: u64,
    /// Whose machine it is (its lender); empty when no one is named.
    #[serde(default)]
    pub owner: String,
    /// How many of its results for jobs with `verify` differed from the one other agents
    /// agreed on: more than a few suggests a faulty or dishonest machine.
    #[serde(default)]
    pub disagreements: u64,
}

/// A change of an agent's scavenging state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// When the coordinator heard of it (ms since the Unix epoch).
    pub at_ms: i64,
    /// The state left.
    pub from: AgentState,
    /// The state entered.
    pub to: AgentState,
    /// Why.
    pub reason: String,
    /// The attempts running or paused on the agent then.
    pub attempts: Vec<AttemptId>,
}

/// `GET /api/v1/agents/{id}/events`: an agent's state changes, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvents {
    /// The agent.
    pub agent: String,
    /// Its state changes.
    pub events: Vec<AgentEvent>,
}

/// `POST /api/v1/agents/{id}/revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The agent.
    pub agent: String,
    /// Always true.
    pub revoked: bool,
    /// How many of its tasks went back to pending.
    pub requeued: usize,
}

/// `POST /api/v1/agents/{id}/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DrainRequest {
    /// How long running attempts may still run, in milliseconds [default: one hour].
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// `POST` and `DELETE /api/v1/agents/{id}/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The agent.
    pub agent: String,
    /// Whether it is being drained now.
    pub draining: bool,
    /// When a drain started: how many attempts it was running (0 when not connected here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<usize>,
    /// When a drain started: how long they may still run, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// `GET /api/v1/clusters`: one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    /// Its ID.
    pub id: String,
    /// What it is, in words.
    pub description: String,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: i64,
    /// Agents enrolled in it.
    pub agents_enrolled: u64,
    /// Of those, connected to this coordinator now.
    pub agents_connected: u64,
    /// Whether waiting work may evict running work that stands in its way (fair share, or a
    /// user's own lower priorities).
    #[serde(default)]
    pub preempt: bool,
}

/// `PATCH /api/v1/clusters/{id}`: settings to change (those left out stay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Whether waiting work may evict running work that stands in its way.
    #[serde(default)]
    pub preempt: Option<bool>,
}

/// `POST /api/v1/clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewCluster {
    /// Its ID.
    pub id: String,
    /// What it is, in words.
    #[serde(default)]
    pub description: String,
}

/// The answer to [`NewCluster`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterCreated {
    /// Its ID.
    pub id: String,
    /// Always true.
    pub created: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_state_follows_its_tasks() {
        let c = |pending, running, failed, cancelled| Counts {
            pending,
            running,
            succeeded: 1,
            failed,
            cancelled,
        };
        assert_eq!(JobState::of(&c(1, 1, 0, 0), false), JobState::Running);
        assert_eq!(JobState::of(&c(1, 1, 0, 0), true), JobState::Cancelling);
        assert_eq!(JobState::of(&c(1, 0, 1, 0), false), JobState::Pending);
        assert_eq!(JobState::of(&c(0, 0, 1, 1), false), JobState::Cancelled);
        assert_eq!(JobState::of(&c(0, 0, 1, 0), false), JobState::Failed);
        assert_eq!(JobState::of(&c(0, 0, 0, 0), false), JobState::Succeeded);
        assert!(JobState::Failed.is_final() && !JobState::Cancelling.is_final());
    }

    #[test]
    fn a_task_query_reads_its_parameters_and_names_a_bad_one() {
        let q = |s: &str| {
            TaskQuery::parse(
                s.split('&')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.split_once('=').unwrap_or((p, ""))),
            )
        };
        assert_eq!(q(""), Ok(TaskQuery::default()));
        let page = TaskQuery {
            offset: 20,
            limit: 0,
            state: Some(TaskState::Failed),
        };
        assert_eq!(q("offset=20&limit=0&state=failed"), Ok(page));
        assert_eq!(q(&page.to_query_string()[1..]), Ok(page));
        assert_eq!(TaskQuery::default().to_query_string(), "");
        assert_eq!(q("limit=10000").map(|p| p.limit), Ok(TaskQuery::MAX_LIMIT));
        for (query, named) in [
            ("limit=10001", "limit: \"10001\""),
            ("limit=-1", "limit: \"-1\""),
            ("offset=x", "offset: \"x\""),
            ("offset=4294967296", "offset: "),
            ("state=done", "state: \"done\""),
            ("limit=1&limit=2", "limit: given twice"),
            ("page=2", "page: not a parameter"),
        ] {
            let e = q(query).unwrap_err().to_string();
            assert!(e.starts_with(named), "{query}: {e}");
        }
    }

    #[test]
    fn a_detail_names_the_next_offset_only_when_there_is_one() {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "t", "count": 1, "modules": [],
            "resources": {"memory": 1, "timeout_ms": 1},
            "max_attempts": 1
        }))
        .unwrap();
        let mut d = JobDetail {
            job: JobSummary {
                id: 1,
                name: "t".into(),
                state: JobState::Pending,
                count: 1,
                counts: Counts::default(),
                created_ms: 0,
                owner: "alice".into(),
            },
            waiting_reason: None,
            hold: None,
            spec,
            tasks: vec![],
            next_offset: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert!(v.get("next_offset").is_none(), "{v}");
        d.next_offset = Some(7);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["next_offset"], 7, "{v}");
        assert_eq!(serde_json::from_value::<JobDetail>(v).unwrap(), d);
    }

    #[test]
    fn a_drain_answer_says_only_what_applies() {
        let undrained = Drain {
            agent: "a".into(),
            draining: false,
            running: None,
            deadline_ms: None,
        };
        assert_eq!(
            serde_json::to_string(&undrained).unwrap(),
            r#"{"agent":"a","draining":false}"#
        );
    }

    #[test]
    fn roles_and_user_names_are_read_as_written() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        assert!(
            "admin"
                .parse::<Role>()
                .unwrap_err()
                .contains("submit, read or operate")
        );
        for good in ["alice", "ci-bot", "j.doe@lab", "0day_1"] {
            assert!(check_user_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_USER_NAME + 1);
        for bad in ["", "-x", "a b", "a/b", "ä", long.as_str(), "a,b"] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }
}
