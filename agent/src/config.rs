//! The agent's configuration (`agent.toml`), owned by the machine's owner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// `agent.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The coordinator's QUIC address, `host:port`.
    #[serde(default = "default_coordinator")]
    pub coordinator: String,
    /// sha256 of the coordinator's public key (`sha256:...`), pinned on every connection.
    /// Without it the agent accepts any coordinator certificate and says so in its log.
    #[serde(default)]
    pub coordinator_key: Option<String>,
    /// Where the agent keeps its ID, cached blobs, work directories and unsent results.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// A name for people [default: the host name].
    #[serde(default)]
    pub name: Option<String>,
    /// Tasks run at once [default: the number of cores].
    #[serde(default)]
    pub slots: Option<u32>,
    /// The most memory one task's module may have, e.g. "2GiB" [default: 1/4 of the machine's memory, at most 4 GiB].
    #[serde(default)]
    pub max_task_memory: Option<String>,
    /// Disk space for cached modules, inputs and compiled modules, e.g. "4GiB"; the least
    /// recently used are deleted past it.
    #[serde(default = "default_cache_size")]
    pub cache_size: String,
    /// The largest checkpoint a guest may keep, e.g. "64MiB".
    #[serde(default = "default_checkpoint_cap")]
    pub checkpoint_cap: String,
    /// Memory slots for guests (`[pool]`): the fixed size classes and the variable pool.
    #[serde(default)]
    pub pool: crate::pool::PoolSettings,
    /// Bytes of stdout and of stderr kept per module, e.g. "1MiB".
    #[serde(default = "default_output_cap")]
    pub output_cap: String,
    /// Bytes of /output kept per task, e.g. "1GiB".
    #[serde(default = "default_outputs_cap")]
    pub outputs_cap: String,
    /// The most disk one task's /output and /scratch may take while it runs, e.g. "4GiB": a
    /// task that writes more is stopped (`disk_exceeded`).
    #[serde(default = "default_task_disk")]
    pub task_disk: String,
    /// The most files and directories one task may make under /output and /scratch.
    #[serde(default = "default_task_files")]
    pub task_files: u64,
    /// Disk space to keep free where `data_dir` is, e.g. "1GiB": below it the agent takes no
    /// new work.
    #[serde(default = "default_min_free_disk")]
    pub min_free_disk: String,
    /// How often one task's checkpoints are kept at most, e.g. "5s": a checkpoint sooner
    /// than that after the last one kept waits in memory and is dropped if a newer one comes
    /// (a checkpoint kept on leaving is always kept at once).
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: String,
    /// The owner's trust list: an OpenSSH allowed_signers file. Modules signed by anyone else
    /// are refused. Without one, nothing is trusted.
    #[serde(default)]
    pub allowed_signers: Option<PathBuf>,
    /// Revoked keys: OpenSSH public keys, one per line. Their signatures are refused whatever
    /// the trust list says.
    #[serde(default)]
    pub revoked_signers: Option<PathBuf>,
    /// Labels the coordinator can match jobs' constraints against.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A machine lent whole: no scavenging policy, guests always welcome and never paused
    /// (they still run at idle priority).
    #[serde(default)]
    pub dedicated: bool,
    /// How often the machine's load is read, e.g. "20ms".
    #[serde(default = "default_sample_interval")]
    pub sample_interval: String,
    /// When guests may run, pause, slow down or must leave (`[policy]`).
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
    /// The most cores lent to guests: the cores the coordinator counts on and, at most, the
    /// slots (default: all of them).
    #[serde(default)]
    pub max_cores: Option<u32>,
    /// The most memory lent to guests, e.g. "4GiB": the machine's memory as the coordinator
    /// counts it and the largest task (default: all of it).
    #[serde(default)]
    pub max_memory: Option<String>,
    /// The owner's standing rules (`[owner]`): time windows, exclusive programs.
    #[serde(default)]
    pub owner: crate::rules::OwnerRules,
    /// A join token to enroll with at each connection (enrolling an enrolled key uses no
    /// token). A secret, so never read from the file: `lull-agent run --join-token` or
    /// LULL_JOIN_TOKEN sets it; `lull-agent install --token` enrolls once and keeps none.
    #[serde(skip)]
    pub join_token: Option<String>,
}

fn default_sample_interval() -> String {
    "20ms".into()
}

fn default_coordinator() -> String {
    format!("127.0.0.1:{}", lull_protocol::DEFAULT_QUIC_PORT)
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("lull/agent")
}

fn default_checkpoint_cap() -> String {
    "64MiB".into()
}

fn default_cache_size() -> String {
    "4GiB".into()
}

fn default_output_cap() -> String {
    "1MiB".into()
}

fn default_outputs_cap() -> String {
    "1GiB".into()
}

fn default_task_disk() -> String {
    "4GiB".into()
}

fn default_task_files() -> u64 {
    100_000
}

fn default_min_free_disk() -> String {
    "1GiB".into()
}

fn default_checkpoint_interval() -> String {
    "5s".into()
}

impl Default for AgentConfig {
    fn default() -> Self {
        toml::from_str("").expect("the empty configuration is valid")
    }
}

impl AgentConfig {
    /// Reads `agent.toml`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("reading {}", path.display()))
    }
}
