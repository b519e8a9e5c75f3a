//! Lull's wire contract, shared by the agent, the coordinator and the `lull` command.
//!
//! Nothing here does IO or reads a clock: every type is plain data, every function a pure
//! transformation, so that both ends of a connection agree by construction. The one exception
//! is opt-in: the `tokio` feature adds [`frame::stream`], reading and writing frames on any
//! async stream, which both ends share.
//!
//! | module | owns |
//! |---|---|
//! | [`api`] | the documents of the coordinator's HTTP API, which `lull` reads, and task states |
//! | [`digest`] | content digests (`sha256:<hex>`) that name every blob |
//! | [`frame`] | length-prefixed, size-capped framing of messages on a QUIC stream |
//! | [`message`] | the messages between agent and coordinator, and the protocol version |
//! | [`job`] | the job file (`job.toml`) and the resolved job definition a coordinator stores |
//! | [`module_check`] | checks that bytes are WebAssembly Lull can run, naming any import it does not provide |
//! | [`signature`] | SSHSIG signatures (namespace `lull-workload`) and `allowed_signers` trust lists |
//! | [`sync`] | the one way both ends take a lock |
//! | `process` (`tokio` feature) | waiting for the signals that stop a process |
//! | [`units`] | human sizes (`256MiB`) and durations (`30m`) used in job and config files |

pub mod api;
pub mod constraint;
pub mod digest;
pub mod frame;
#[cfg(feature = "tls")]
pub mod identity;
pub mod job;
pub mod message;
pub mod module_check;
#[cfg(feature = "tokio")]
pub mod process;
pub mod signature;
pub mod sync;
mod task_state;
pub mod units;
pub mod workflow;

pub use digest::Digest;
pub use message::PROTOCOL_VERSION;

/// The UDP port agents reach the coordinator on (QUIC).
pub const DEFAULT_QUIC_PORT: u16 = 7443;
/// The TCP port people and the CLI reach the coordinator on (HTTP API, dashboard, metrics).
pub const DEFAULT_HTTP_PORT: u16 = 7080;
/// ALPN protocol name spoken on the agent connection.
pub const ALPN: &[u8] = b"lull/1";
