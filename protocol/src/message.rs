//! Messages between agent and coordinator.
//!
//! An agent opens one QUIC connection to its coordinator. On it, every bidirectional stream starts
//! with one [`AgentMessage`] frame that says what the stream is for:
//!
//! - [`AgentMessage::Hello`] opens the *control stream*: afterwards the agent sends
//!   [`AgentMessage`]s (reports, task starts, results) and the coordinator sends
//!   [`CoordinatorMessage`]s (welcome, assignments, cancels, acknowledgements), framed.
//! - [`AgentMessage::GetBlob`] asks for a blob: the coordinator answers with one
//!   [`BlobReply`] frame, then (when found) exactly `size` raw bytes, then finishes the stream.
//! - [`AgentMessage::PutBlob`] uploads a blob: `size` raw bytes follow the frame, then the agent
//!   finishes its side; the coordinator checks the digest and answers with one [`BlobReply`].
//! - [`AgentMessage::Enroll`] enrolls the connection's key with a join token: the coordinator
//!   answers with one [`EnrollReply`] and finishes the stream. It needs no hello first.
//!
//! Blob streams need the control stream's hello to have been welcomed first: the coordinator
//! serves an agent only the blobs of the attempts assigned to it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::job::{DEFAULT_SUCCESS_EXIT_CODES, Failure, JobSpec, TaskItem};

/// The version of this protocol. Peers refuse each other when it differs.
pub const PROTOCOL_VERSION: u32 = 2;

/// A task: one index of one job.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct TaskId {
    /// The job's number.
    pub job: u64,
    /// The task's index in the job, `0..count`.
    pub index: u32,
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.job, self.index)
    }
}

/// One attempt at a task. Results and leases belong to an attempt, not to the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttemptId {
    /// The task.
    pub task: TaskId,
    /// The attempt number, from 1.
    pub attempt: u32,
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.task, self.attempt)
    }
}

/// What an agent offers, sent in its hello and refreshed in reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Capacity {
    /// Logical CPU cores.
    pub cores: u32,
    /// Total memory in bytes.
    pub memory_total: u64,
    /// Memory available now, in bytes.
    pub memory_available: u64,
    /// Tasks the agent runs at once.
    pub slots: u32,
    /// The most memory the agent lets one task's module have, in bytes.
    pub max_task_memory: u64,
    /// Operating system (`linux`, `macos`, `windows`).
    pub os: String,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Labels from the agent's configuration.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The agent's wasmtime version, e.g. `48.0.1`.
    #[serde(default)]
    pub wasmtime: String,
}

/// An agent's scavenging state: what its policy has decided about the guests. On the wire,
/// in the API and in the log by its [`name`](AgentState::name), e.g. `waiting_for_idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    /// No guests; waiting until the machine has been idle long enough (or for the owner's
    /// `lull-agent resume`).
    WaitingForIdle,
    /// Guests run with `cpu_cap` of each core.
    Running,
    /// Guests run with a share of each core that shrinks as the incumbents' load grows.
    Throttled,
    /// Guests are stopped but kept; their leases hold.
    Paused,
    /// Guests have been told to stop within the grace period; no new work.
    Evicting,
}

impl AgentState {
    /// Every state.
    pub const ALL: [AgentState; 5] = [
        AgentState::WaitingForIdle,
        AgentState::Running,
        AgentState::Throttled,
        AgentState::Paused,
        AgentState::Evicting,
    ];

    /// Its name on the wire, e.g. `waiting_for_idle`.
    pub fn name(self) -> &'static str {
        match self {
            AgentState::WaitingForIdle => "waiting_for_idle",
            AgentState::Running => "running",
            AgentState::Throttled => "throttled",
            AgentState::Paused => "paused",
            AgentState::Evicting => "evicting",
        }
    }

    /// The state with this name on the wire, if one has it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Whether an agent in this state runs guests and takes new work.
    pub fn takes_work(self) -> bool {
        matches!(self, AgentState::Running | AgentState::Throttled)
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the agent's owner-side policy says now: whether it takes work, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentStatus {
    /// Whether the agent takes new tasks now (its policy says the machine is idle enough).
    pub accepting: bool,
    /// The agent's scavenging state.
    pub state: AgentState,
    /// Why it is in that state, e.g. "incumbent CPU 87 % > 30 % for 40 ms".
    pub reason: String,
    /// A smoothed estimate of the machine's idle CPU, as a fraction of the whole machine.
    pub idle_cpu: f64,
    /// The fraction of the machine's CPU the agent's guests used lately.
    pub guest_cpu: f64,
    /// The fraction of the machine's CPU its own programs used lately.
    pub incumbent_cpu: f64,
}

impl Default for AgentStatus {
    fn default() -> Self {
        Self {
            accepting: true,
            state: AgentState::Running,
            reason: String::new(),
            idle_cpu: 1.0,
            guest_cpu: 0.0,
            incumbent_cpu: 0.0,
        }
    }
}

/// Frames an agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Opens the control stream.
    Hello {
        /// [`PROTOCOL_VERSION`] as the agent speaks it.
        protocol_version: u32,
        /// The agent's stable ID (kept in its data directory).
        agent_id: String,
        /// A name for people, usually the host name.
        name: String,
        /// What it offers.
        capacity: Capacity,
        /// Attempts still running on the agent (after a reconnect).
        #[serde(default)]
        running: Vec<AttemptId>,
        /// Its policy's view of the machine.
        #[serde(default)]
        status: AgentStatus,
        /// Modules it holds compiled (the scheduler prefers it for their tasks).
        #[serde(default)]
        compiled: Vec<Digest>,
    },
    /// Fresh capacity figures and what is running; also renews leases.
    Report {
        /// What it offers now.
        capacity: Capacity,
        /// Attempts running now.
        running: Vec<AttemptId>,
        /// Its policy's view of the machine.
        #[serde(default)]
        status: AgentStatus,
        /// The progress (0..=1) the guests of running attempts reported, where they did.
        #[serde(default)]
        progress: Vec<(AttemptId, f64)>,
    },
    /// A guest of this attempt started running.
    Started {
        /// The attempt.
        attempt: AttemptId,
        /// Microseconds from the assignment's arrival to the guest running, measured on the agent.
        setup_us: u64,
    },
    /// An assigned attempt waits on the agent before it can start (for a memory slot, or a
    /// task slot); sent once when the wait begins.
    Waiting {
        /// The attempt.
        attempt: AttemptId,
        /// Why, e.g. "waiting for 1 memory slot(s) of at least 100 MiB: all in use (2 x 256 MiB)".
        reason: String,
    },
    /// A guest kept a checkpoint; its blob was uploaded first.
    Checkpoint {
        /// The attempt that kept it.
        attempt: AttemptId,
        /// The state's blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// 1 for the attempt's first checkpoint, then 2, 3...
        seq: u64,
        /// The task's progress when it was kept (0..=1), if the guest reported any.
        #[serde(default)]
        progress: Option<f64>,
        /// The agent's signature over [`checkpoint_seal_message`] (ECDSA P-256, ASN.1 DER), in
        /// hex, made with the key its TLS certificate holds.
        seal: String,
    },
    /// Modules the agent compiled or dropped from its cache since it last said.
    Holds {
        /// Now held compiled.
        #[serde(default)]
        compiled: Vec<Digest>,
        /// No longer held.
        #[serde(default)]
        dropped: Vec<Digest>,
    },
    /// An attempt ended; its blobs were uploaded first.
    Result(TaskResult),
    /// The agent's scavenging state changed (pause, resume, throttle, eviction...).
    StateChanged {
        /// The state left.
        from: AgentState,
        /// The state entered.
        to: AgentState,
        /// Why, e.g. "incumbent CPU 87 % > 30 % for 40 ms".
        reason: String,
        /// Attempts affected (running or paused on the agent).
        attempts: Vec<AttemptId>,
    },
    /// Keeps an idle connection's leases fresh.
    Heartbeat,
    /// The answer to [`CoordinatorMessage::Tail`].
    Tail {
        /// The request's number.
        request: u64,
        /// What the module wrote, from the offset asked for; `None` when that module of the
        /// attempt is not running here (not started, or ended: its streams come with its
        /// result).
        live: Option<LiveOutput>,
    },
    /// Opens a blob download stream.
    GetBlob {
        /// The blob wanted.
        digest: Digest,
    },
    /// Opens a blob upload stream; `size` raw bytes follow.
    PutBlob {
        /// The digest the bytes must have.
        digest: Digest,
        /// Their length.
        size: u64,
    },
    /// Enrolls the key this connection presented, under `agent_id`, with a join token.
    /// Enrolling a key already enrolled under that ID succeeds without using the token.
    Enroll {
        /// The join token (`lull-coordinator token create`).
        token: String,
        /// The agent's stable ID.
        agent_id: String,
        /// A name for people.
        name: String,
    },
}

/// Frames a coordinator sends on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CoordinatorMessage {
    /// The hello was accepted.
    Welcome {
        /// The coordinator's [`PROTOCOL_VERSION`].
        protocol_version: u32,
        /// How long a lease lasts without a report, in milliseconds.
        lease_ms: u64,
        /// How often the agent should report, in milliseconds.
        report_interval_ms: u64,
    },
    /// The hello was refused; the connection closes after this.
    Refused {
        /// Why, in words for the agent's log.
        reason: String,
    },
    /// Run this attempt.
    Assign(Box<Assignment>),
    /// Stop this attempt.
    Cancel {
        /// The attempt.
        attempt: AttemptId,
        /// Why, for the record.
        reason: String,
    },
    /// Evict this attempt: let it run at most `grace_ms` more, then stop it and report it
    /// evicted (the coordinator runs it again elsewhere, whatever its attempts). A guest that
    /// ends by itself within the grace keeps its own outcome.
    Evict {
        /// The attempt.
        attempt: AttemptId,
        /// Why, for the record (e.g. "the agent is being drained").
        reason: String,
        /// How long it may still run, in milliseconds.
        grace_ms: u64,
    },
    /// The result of this attempt is stored; the agent may forget it.
    ResultAck {
        /// The attempt.
        attempt: AttemptId,
    },
    /// A checkpoint the agent reported was not kept, and why.
    CheckpointRefused {
        /// The attempt.
        attempt: AttemptId,
        /// Its sequence number.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// Asks what a running module has written so far to one of its streams, from `offset`:
    /// answered by [`AgentMessage::Tail`] with at most [`MAX_TAIL`] bytes.
    Tail {
        /// The request's number, repeated in the answer.
        request: u64,
        /// The attempt.
        attempt: AttemptId,
        /// The module, by name.
        module: String,
        /// The stream.
        stream: Stream,
        /// The first byte wanted.
        offset: u64,
    },
}

/// A guest's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl std::str::FromStr for Stream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(Stream::Stdout),
            "stderr" => Ok(Stream::Stderr),
            other => Err(format!("{other:?} is not a stream: stdout or stderr")),
        }
    }
}

/// The most bytes of output one [`AgentMessage::Tail`] carries.
pub const MAX_TAIL: usize = 256 << 10;

/// What a running module has written to a stream, as far as the agent keeps it (its first
/// bytes, up to the agent's cap on captured output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveOutput {
    /// The bytes from the offset asked for (at most [`MAX_TAIL`]), base64 in JSON.
    #[serde(with = "base64_bytes")]
    pub bytes: Vec<u8>,
    /// How many bytes of the stream the agent keeps so far.
    pub kept: u64,
    /// Whether the stream went past the agent's cap: what follows `kept` is dropped.
    pub truncated: bool,
}

/// Bytes as standard base64 text.
pub mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes bytes as base64.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Reads base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Work for an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// The attempt being assigned.
    pub attempt: AttemptId,
    /// The job it belongs to.
    pub job: JobSpec,
    /// The checkpoint an earlier attempt of the task kept, which this one restores.
    #[serde(default)]
    pub checkpoint: Option<CheckpointRef>,
    /// For a task of a job with `verify` above 1: the seed of the guest's randomness, the same
    /// for every agent that runs the task, which runs it deterministically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The task's own values and files, for a job whose tasks have them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<TaskItem>,
}

impl Assignment {
    /// Every blob the attempt needs: the job's, the task's own, then the checkpoint's.
    pub fn blobs(&self) -> Vec<Digest> {
        self.job
            .blobs()
            .map(|(d, _)| d)
            .chain(self.item.iter().flat_map(|i| i.blobs().map(|f| f.digest)))
            .chain(self.checkpoint.as_ref().map(|c| c.digest))
            .collect()
    }

    /// The task's values by column (none without an item).
    pub fn values(&self) -> &std::collections::BTreeMap<String, String> {
        self.item
            .as_ref()
            .map_or(&crate::job::NO_VALUES, |i| &i.values)
    }
}

/// A kept checkpoint: a blob of the guest's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointRef {
    /// The state's blob.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// The attempt that kept it.
    pub attempt: u32,
}

/// The bytes an agent signs to vouch for a checkpoint: the attempt it belongs to, the state's
/// digest and size, and its sequence number within the attempt. A seal cannot be moved to
/// another task, attempt or state.
pub fn checkpoint_seal_message(
    attempt: AttemptId,
    digest: &Digest,
    size: u64,
    seq: u64,
) -> Vec<u8> {
    format!("lull-checkpoint-v1\n{attempt}\n{digest}\n{size}\n{seq}\n").into_bytes()
}

/// The answer on a blob stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlobReply {
    /// Found (download: `size` bytes follow) or stored (upload).
    Ok {
        /// Its length.
        size: u64,
    },
    /// The coordinator does not hold it.
    NotFound,
    /// The upload was refused.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// The answer on an enrollment stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EnrollReply {
    /// The key is enrolled under the ID: the agent may say hello.
    Enrolled {
        /// Whether it was enrolled already (the token was not used).
        already: bool,
    },
    /// Not enrolled.
    Refused {
        /// Why, in words for the person installing the agent.
        reason: String,
    },
}

/// How one module of an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The program exited (`proc_exit` or returning from `main`/`run`).
    Exited {
        /// Its exit code; 0 is success.
        code: i32,
    },
    /// The guest trapped (a bug in it, or a limit such as the stack).
    Trapped {
        /// The trap, as wasmtime describes it.
        message: String,
    },
    /// The guest ran longer than the job's timeout.
    TimedOut {
        /// The limit, in milliseconds.
        limit_ms: u64,
    },
    /// The guest tried to grow its memory past the job's cap.
    MemoryExceeded {
        /// The cap, in bytes.
        limit: u64,
    },
    /// The attempt was cancelled.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// The agent evicted it: the machine's owner or its programs needed the machine back. Not
    /// the task's fault: the coordinator runs it again elsewhere.
    Evicted {
        /// Why, e.g. "available memory 300 MiB < reserve 512 MiB".
        reason: String,
    },
    /// The agent would not run it (bad digest, untrusted signer, not WebAssembly, memory above
    /// the agent's cap, an import Lull does not provide, ...).
    Refused {
        /// Why.
        reason: String,
    },
    /// The guest kept a checkpoint and left on its own, with no eviction notice
    /// (`checkpoint-and-leave`). The task runs again from that checkpoint, and this uses one of
    /// its attempts, so that a guest that always leaves cannot run for ever.
    Left {
        /// Why, e.g. "the guest left after keeping a checkpoint".
        reason: String,
    },
    /// The task's files under `/output` and `/scratch` grew past the agent's `task_disk` cap
    /// (bytes or files) while it ran: the agent stopped it. Counts as a failed attempt.
    DiskExceeded {
        /// Which cap, and how far the task went, e.g. "the task's files took 1.2 GiB, over
        /// this agent's task_disk of 1 GiB".
        reason: String,
    },
    /// The attempt ran, but its result could not be reported as it was: it would not fit in a
    /// message, the coordinator found it invalid, or the agent could not keep the task's
    /// output (its disk full). Counts as a failed attempt.
    Unreportable {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// The text an outcome carries (a trap's message or a reason), if any.
    pub fn message(&self) -> Option<&str> {
        match self {
            Outcome::Trapped { message } => Some(message),
            Outcome::Cancelled { reason }
            | Outcome::Evicted { reason }
            | Outcome::Refused { reason }
            | Outcome::Left { reason }
            | Outcome::DiskExceeded { reason }
            | Outcome::Unreportable { reason } => Some(reason),
            Outcome::Exited { .. } | Outcome::TimedOut { .. } | Outcome::MemoryExceeded { .. } => {
                None
            }
        }
    }

    /// Cuts the outcome's message to [`MAX_OUTCOME_MESSAGE`] bytes.
    pub fn bound(&mut self) {
        match self {
            Outcome::Trapped { message: text }
            | Outcome::Cancelled { reason: text }
            | Outcome::Evicted { reason: text }
            | Outcome::Refused { reason: text }
            | Outcome::Left { reason: text }
            | Outcome::DiskExceeded { reason: text }
            | Outcome::Unreportable { reason: text } => truncate_message(text, MAX_OUTCOME_MESSAGE),
            Outcome::Exited { .. } | Outcome::TimedOut { .. } | Outcome::MemoryExceeded { .. } => {}
        }
    }

    /// Whether this is an exit with one of `codes` (a module's `success_exit_codes`).
    pub fn succeeds_with(&self, codes: &[i32]) -> bool {
        matches!(self, Outcome::Exited { code } if codes.contains(code))
    }

    /// What kind of failure this is, for `retry.on`, when it is not a success: `None` for
    /// what is tried again whatever the job says (an eviction, a guest that left after a
    /// checkpoint) and for a cancellation.
    pub fn failure(&self) -> Option<Failure> {
        match self {
            Outcome::Exited { .. } => Some(Failure::Exit),
            Outcome::Trapped { .. } => Some(Failure::Trap),
            Outcome::MemoryExceeded { .. } => Some(Failure::Memory),
            Outcome::TimedOut { .. } => Some(Failure::Timeout),
            Outcome::DiskExceeded { .. } => Some(Failure::Disk),
            Outcome::Refused { .. } | Outcome::Unreportable { .. } => Some(Failure::Agent),
            Outcome::Cancelled { .. } | Outcome::Evicted { .. } | Outcome::Left { .. } => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Exited { code } => write!(f, "exited with code {code}"),
            Outcome::Trapped { message } => write!(f, "trapped: {message}"),
            Outcome::TimedOut { limit_ms } => {
                write!(f, "timed out after {:.1}s", *limit_ms as f64 / 1000.0)
            }
            Outcome::MemoryExceeded { limit } => write!(
                f,
                "memory cap of {} reached",
                crate::units::format_size(*limit)
            ),
            Outcome::Cancelled { reason } => write!(f, "cancelled: {reason}"),
            Outcome::Refused { reason } => write!(f, "refused by the agent: {reason}"),
            Outcome::Evicted { reason } => write!(f, "evicted: {reason}"),
            Outcome::Left { reason } => write!(f, "left: {reason}"),
            Outcome::DiskExceeded { reason } => write!(f, "disk cap reached: {reason}"),
            Outcome::Unreportable { reason } => {
                write!(f, "its result could not be reported: {reason}")
            }
        }
    }
}

/// The most files under `/output` one result lists; an agent drops the rest (and says so).
pub const MAX_OUTPUT_FILES: usize = 4096;
/// The longest message an outcome carries (a trap, a reason), in bytes; agents cut longer ones.
pub const MAX_OUTCOME_MESSAGE: usize = 4096;

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut with `…`.
pub fn truncate_message(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
}

/// A captured stream (stdout or stderr), stored as a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured {
    /// The blob holding the bytes kept.
    pub digest: Digest,
    /// Bytes kept.
    pub size: u64,
    /// Whether the guest wrote more than the cap and the rest was dropped.
    pub truncated: bool,
}

/// How one module of an attempt ended, with its captured output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleResult {
    /// The module's name from the job.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Its standard output.
    pub stdout: Option<Captured>,
    /// Its standard error.
    pub stderr: Option<Captured>,
}

/// A file the attempt wrote under `/output`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Path relative to `/output`, `/`-separated.
    pub path: String,
    /// Its blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// The end of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    /// The attempt.
    pub attempt: AttemptId,
    /// One entry per module, in job order.
    pub modules: Vec<ModuleResult>,
    /// Files written to `/output`.
    pub outputs: Vec<OutputFile>,
    /// Wall time spent running, in milliseconds.
    pub elapsed_ms: u64,
    /// Bytes of `/output` dropped because they exceeded the agent's cap, if any.
    #[serde(default)]
    pub outputs_truncated: bool,
}

impl TaskResult {
    /// What agents that ran the task must agree on: each module's name, outcome and captured
    /// streams, and the output files (by path) with their digests, as one digest. The attempt,
    /// its times and anything else that differs between honest runs are left out.
    pub fn digest(&self) -> Digest {
        #[derive(Serialize)]
        struct Agreed<'a> {
            modules: &'a [ModuleResult],
            outputs: Vec<&'a OutputFile>,
            outputs_truncated: bool,
        }
        let mut outputs: Vec<&OutputFile> = self.outputs.iter().collect();
        outputs.sort_by(|a, b| a.path.cmp(&b.path));
        let agreed = Agreed {
            modules: &self.modules,
            outputs,
            outputs_truncated: self.outputs_truncated,
        };
        let json = serde_json::to_vec(&agreed).expect("a result serializes");
        let mut hasher = crate::digest::Hasher::new();
        hasher.update(b"lull result v1\n");
        hasher.update(&json);
        hasher.finish()
    }

    /// Whether module `i` of the result succeeded: it exited with one of the codes the
    /// job's module `i` lists as success.
    fn module_succeeded(&self, job: &JobSpec, i: usize) -> bool {
        let codes = job
            .modules
            .get(i)
            .map_or(&DEFAULT_SUCCESS_EXIT_CODES[..], |m| &m.success_exit_codes);
        self.modules
            .get(i)
            .is_some_and(|m| m.outcome.succeeds_with(codes))
    }

    /// The modules that did not succeed, with their indexes.
    fn failed_modules<'a>(
        &'a self,
        job: &'a JobSpec,
    ) -> impl Iterator<Item = &'a ModuleResult> + 'a {
        self.modules
            .iter()
            .enumerate()
            .filter(move |(i, _)| !self.module_succeeded(job, *i))
            .map(|(_, m)| m)
    }

    /// Whether every module of `job` exited with one of its success codes.
    pub fn succeeded(&self, job: &JobSpec) -> bool {
        !self.modules.is_empty() && self.failed_modules(job).next().is_none()
    }

    /// Whether the attempt was evicted (and none of its modules failed on its own).
    pub fn evicted(&self, job: &JobSpec) -> bool {
        let mut failed = self.failed_modules(job).peekable();
        failed.peek().is_some() && failed.all(|m| matches!(m.outcome, Outcome::Evicted { .. }))
    }

    /// The kind of the first failure (the one [`TaskResult::cause`] names), for `retry.on`;
    /// `None` when the attempt succeeded, or when its failure is tried again whatever the
    /// job says ([`Outcome::failure`]).
    pub fn failure(&self, job: &JobSpec) -> Option<Failure> {
        self.failed_modules(job).next()?.outcome.failure()
    }

    /// Whether the attempt was cancelled.
    pub fn cancelled(&self) -> bool {
        self.modules
            .iter()
            .any(|m| matches!(m.outcome, Outcome::Cancelled { .. }))
    }

    /// The first failure, in words: which module and how it ended. A refusal concerns the
    /// whole task and names its module itself.
    pub fn cause(&self, job: &JobSpec) -> Option<String> {
        self.failed_modules(job).next().map(|m| match &m.outcome {
            Outcome::Refused { .. } => m.outcome.to_string(),
            other => format!("module {}: {other}", m.name),
        })
    }

    /// A result of `attempt` in which every module of `job` ended with `outcome`, with no
    /// output: an attempt refused before it started, or a result that could not be kept.
    pub fn uniform(attempt: AttemptId, job: &JobSpec, outcome: Outcome) -> TaskResult {
        TaskResult {
            attempt,
            modules: job
                .modules
                .iter()
                .map(|m| ModuleResult {
                    name: m.name.clone(),
                    outcome: outcome.clone(),
                    stdout: None,
                    stderr: None,
                })
                .collect(),
            outputs: vec![],
            elapsed_ms: 0,
            outputs_truncated: false,
        }
    }

    /// Checks a result an agent sent for an attempt of `job`: one module result per module of
    /// the job, by name and in order; at most [`MAX_OUTPUT_FILES`] outputs, each a path that
    /// stays inside `/output`, none twice; outcome messages within [`MAX_OUTCOME_MESSAGE`].
    pub fn check(&self, job: &JobSpec) -> Result<(), InvalidResult> {
        if self.modules.len() != job.modules.len() {
            return Err(InvalidResult::ModuleCount {
                results: self.modules.len(),
                modules: job.modules.len(),
            });
        }
        for (m, spec) in self.modules.iter().zip(&job.modules) {
            if m.name != spec.name {
                return Err(InvalidResult::ModuleName {
                    result: m.name.clone(),
                    module: spec.name.clone(),
                });
            }
            if let Some(message) = m.outcome.message()
                && message.len() > MAX_OUTCOME_MESSAGE
            {
                return Err(InvalidResult::MessageTooLong {
                    module: m.name.clone(),
                    bytes: message.len(),
                });
            }
        }
        if self.outputs.len() > MAX_OUTPUT_FILES {
            return Err(InvalidResult::TooManyOutputs(self.outputs.len()));
        }
        let mut paths = std::collections::BTreeSet::new();
        for o in &self.outputs {
            crate::job::check_input_path(&o.path)
                .map_err(|e| InvalidResult::OutputPath(o.path.clone(), e))?;
            if !paths.insert(o.path.as_str()) {
                return Err(InvalidResult::DuplicateOutput(o.path.clone()));
            }
        }
        Ok(())
    }

    /// Makes the result fit in a frame of `max` bytes as an [`AgentMessage::Result`]: when it
    /// does not, its outputs are dropped, and when it still does not, every module's outcome
    /// becomes [`Outcome::Unreportable`] with the reason and its captured streams are dropped.
    /// Returns whether it had to change anything.
    pub fn fit(&mut self, max: usize) -> bool {
        // The message adds its tag (`"type":"result",`) to the result's own fields.
        let size = |r: &TaskResult| crate::job::json_len(r) + 64;
        let before = size(self);
        if before <= max {
            return false;
        }
        let files = self.outputs.len();
        self.outputs.clear();
        self.outputs_truncated = true;
        if size(self) <= max {
            return true;
        }
        let reason = format!(
            "it takes {before} bytes ({files} output files), more than the {max} bytes a message may"
        );
        for m in &mut self.modules {
            m.outcome = Outcome::Unreportable {
                reason: reason.clone(),
            };
            m.stdout = None;
            m.stderr = None;
        }
        true
    }

    /// Every blob this result refers to, each once (a task's stdout and stderr are often
    /// both empty: one blob).
    pub fn blobs(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = self.outputs.iter().map(|o| o.digest).collect();
        for m in &self.modules {
            out.extend(m.stdout.iter().chain(m.stderr.iter()).map(|c| c.digest));
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Why a result an agent sent does not fit its job: it is not kept, and the attempt fails with
/// the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResult {
    /// Not one module result per module.
    #[error("it has {results} module result(s); the job has {modules} module(s)")]
    ModuleCount {
        /// Module results sent.
        results: usize,
        /// Modules in the job.
        modules: usize,
    },
    /// A module result out of order or misnamed.
    #[error("module result {result:?} where the job has module {module:?}")]
    ModuleName {
        /// The name in the result.
        result: String,
        /// The name in the job.
        module: String,
    },
    /// An outcome's message over [`MAX_OUTCOME_MESSAGE`] bytes.
    #[error(
        "module {module}: its outcome's message is {bytes} bytes; the most is {MAX_OUTCOME_MESSAGE}"
    )]
    MessageTooLong {
        /// The module.
        module: String,
        /// The message's length.
        bytes: usize,
    },
    /// More than [`MAX_OUTPUT_FILES`] output files.
    #[error("it lists {0} output files; the most is {MAX_OUTPUT_FILES}")]
    TooManyOutputs(usize),
    /// An output file's path that could reach out of its folder.
    #[error("output file {0:?} {1}")]
    OutputPath(String, crate::job::NameError),
    /// An output file listed twice.
    #[error("output file {0:?} is listed twice")]
    DuplicateOutput(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json() {
        let m = AgentMessage::GetBlob {
            digest: Digest::of(b"x"),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.starts_with("{\"type\":\"get_blob\""), "{json}");
        let back: AgentMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn live_output_travels_as_base64_and_the_largest_fits_a_frame() {
        let m = AgentMessage::Tail {
            request: 7,
            live: Some(LiveOutput {
                bytes: b"line 1\n\xff".to_vec(),
                kept: 9,
                truncated: false,
            }),
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"bytes\":\"bGluZSAxCv8=\""), "{json}");
        assert_eq!(serde_json::from_str::<AgentMessage>(&json).unwrap(), m);
        let bad = json.replace("bGluZSAxCv8=", "not base64!");
        assert!(serde_json::from_str::<AgentMessage>(&bad).is_err());
        let largest = AgentMessage::Tail {
            request: u64::MAX,
            live: Some(LiveOutput {
                bytes: vec![0xff; MAX_TAIL],
                kept: u64::MAX,
                truncated: true,
            }),
        };
        assert!(crate::frame::to_bytes(&largest, crate::frame::DEFAULT_MAX_FRAME).is_ok());
        assert_eq!("stderr".parse::<Stream>(), Ok(Stream::Stderr));
        assert!("stdin".parse::<Stream>().is_err());
    }

    #[test]
    fn result_success_and_cause() {
        let attempt = AttemptId {
            task: TaskId { job: 3, index: 7 },
            attempt: 1,
        };
        assert_eq!(attempt.to_string(), "3.7#1");
        let mut r = TaskResult {
            attempt,
            modules: vec![ModuleResult {
                name: "wc".into(),
                outcome: Outcome::Exited { code: 0 },
                stdout: None,
                stderr: None,
            }],
            outputs: vec![],
            elapsed_ms: 5,
            outputs_truncated: false,
        };
        let mut job = job_of(&["wc"]);
        assert!(r.succeeded(&job));
        assert_eq!((r.cause(&job), r.failure(&job)), (None, None));
        r.modules[0].outcome = Outcome::MemoryExceeded { limit: 1 << 20 };
        assert!(!r.succeeded(&job));
        assert_eq!(
            r.cause(&job).unwrap(),
            "module wc: memory cap of 1 MiB reached"
        );
        assert_eq!(r.failure(&job), Some(Failure::Memory));
        // Exit codes: 0 unless the module lists others.
        r.modules[0].outcome = Outcome::Exited { code: 10 };
        assert!(!r.succeeded(&job));
        assert_eq!(r.cause(&job).unwrap(), "module wc: exited with code 10");
        assert_eq!(r.failure(&job), Some(Failure::Exit));
        job.modules[0].success_exit_codes = vec![0, 10, 20];
        assert!(r.succeeded(&job));
        assert_eq!(r.cause(&job), None);
        r.modules[0].outcome = Outcome::Exited { code: 0 };
        assert!(r.succeeded(&job));
        r.modules[0].outcome = Outcome::Exited { code: 1 };
        assert!(!r.succeeded(&job));
    }

    #[test]
    fn an_eviction_is_one_when_every_other_module_succeeded_by_its_codes() {
        let mut r = result_of(&["a", "b"], 0);
        let mut job = job_of(&["a", "b"]);
        r.modules[0].outcome = Outcome::Evicted {
            reason: "the owner is back".into(),
        };
        r.modules[1].outcome = Outcome::Exited { code: 3 };
        assert!(!r.evicted(&job), "b failed on its own");
        assert_eq!(r.failure(&job), None, "the first failure is the eviction");
        job.modules[1].success_exit_codes = vec![3];
        assert!(r.evicted(&job));
        r.modules[0].outcome = Outcome::Exited { code: 0 };
        assert!(!r.evicted(&job) && r.succeeded(&job));
        r.modules[0].outcome = Outcome::Refused {
            reason: "untrusted".into(),
        };
        assert_eq!(r.failure(&job), Some(Failure::Agent));
        r.modules[0].outcome = Outcome::Left {
            reason: "left".into(),
        };
        assert_eq!(
            r.failure(&job),
            None,
            "a guest that left is always run again"
        );
    }

    /// A job of modules named `names`, each succeeding with exit code 0.
    fn job_of(names: &[&str]) -> JobSpec {
        let modules: Vec<serde_json::Value> = names
            .iter()
            .map(|n| serde_json::json!({"name": n, "digest": Digest::of(n.as_bytes()), "size": 1}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "name": "j", "count": 1,
            "modules": modules,
            "resources": {"memory": 1048576, "timeout_ms": 1000},
            "max_attempts": 1,
        }))
        .unwrap()
    }

    fn result_of(modules: &[&str], outputs: usize) -> TaskResult {
        TaskResult {
            attempt: AttemptId {
                task: TaskId { job: 1, index: 0 },
                attempt: 1,
            },
            modules: modules
                .iter()
                .map(|name| ModuleResult {
                    name: (*name).into(),
                    outcome: Outcome::Exited { code: 0 },
                    stdout: None,
                    stderr: None,
                })
                .collect(),
            outputs: (0..outputs)
                .map(|i| OutputFile {
                    path: format!("{i:0>400}"),
                    digest: Digest::of(b""),
                    size: 0,
                })
                .collect(),
            elapsed_ms: 1,
            outputs_truncated: false,
        }
    }

    #[test]
    fn a_result_too_large_for_a_frame_is_cut_down_to_an_ordinary_outcome() {
        let max = crate::frame::DEFAULT_MAX_FRAME;
        let mut small = result_of(&["a"], 10);
        assert!(!small.fit(max));
        assert_eq!(small.outputs.len(), 10);
        // Too many outputs: they go, the rest stays.
        let mut many = result_of(&["a"], 20_000);
        assert!(many.fit(max));
        assert!(many.outputs.is_empty() && many.outputs_truncated);
        assert!(many.succeeded(&job_of(&["a"])));
        // Still too large without outputs: every module is unreportable, with the reason.
        let mut huge = result_of(&["a", "b"], 0);
        huge.modules[0].outcome = Outcome::Trapped {
            message: "x".repeat(max),
        };
        assert!(huge.fit(max));
        assert!(!huge.succeeded(&job_of(&["a", "b"])));
        let cause = huge.cause(&job_of(&["a", "b"])).unwrap();
        assert!(
            cause.starts_with("module a: its result could not be reported: it takes"),
            "{cause}"
        );
        for r in [&small, &many, &huge] {
            let msg = AgentMessage::Result(r.clone());
            assert!(crate::frame::to_bytes(&msg, max).is_ok());
        }
    }

    #[test]
    fn a_result_is_checked_against_its_job() {
        let job: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "j", "count": 1,
            "modules": [
                {"name": "a", "digest": Digest::of(b"a"), "size": 1},
                {"name": "b", "digest": Digest::of(b"b"), "size": 1},
            ],
            "resources": {"memory": 1048576, "timeout_ms": 1000},
            "max_attempts": 1,
        }))
        .unwrap();
        assert!(result_of(&["a", "b"], 3).check(&job).is_ok());
        let err = result_of(&["a"], 0).check(&job).unwrap_err().to_string();
        assert_eq!(err, "it has 1 module result(s); the job has 2 module(s)");
        let err = result_of(&["a", "../b"], 0)
            .check(&job)
            .unwrap_err()
            .to_string();
        assert!(err.contains("where the job has module \"b\""), "{err}");
        let mut r = result_of(&["a", "b"], 1);
        r.outputs[0].path = "../../escape".into();
        assert!(
            r.check(&job)
                .unwrap_err()
                .to_string()
                .starts_with("output file \"../../escape\"")
        );
        r.outputs[0].path = "same".into();
        r.outputs.push(r.outputs[0].clone());
        assert_eq!(
            r.check(&job).unwrap_err().to_string(),
            "output file \"same\" is listed twice"
        );
        let r = result_of(&["a", "b"], MAX_OUTPUT_FILES + 1);
        assert!(
            r.check(&job)
                .unwrap_err()
                .to_string()
                .contains("the most is 4096")
        );
        let mut r = result_of(&["a", "b"], 0);
        r.modules[1].outcome = Outcome::Refused {
            reason: "r".repeat(MAX_OUTCOME_MESSAGE + 1),
        };
        assert!(
            r.check(&job)
                .unwrap_err()
                .to_string()
                .starts_with("module b: its outcome's message")
        );
        r.modules[1].outcome.bound();
        assert!(r.check(&job).is_ok());
        assert!(r.modules[1].outcome.message().unwrap().ends_with('…'));
    }
}
