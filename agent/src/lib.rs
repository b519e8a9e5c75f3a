//! The Lull agent: runs signed WebAssembly workloads on a machine while its own programs leave
//! it idle, and reports to a coordinator over QUIC.
//!
//! | module | owns |
//! |---|---|
//! | [`config`] | `agent.toml`, the owner's settings |
//! | [`daemon`] | the main loop: connection, reports, assignments, results sent until acknowledged |
//! | [`outbox`] | results kept on disk in groups (one sync for many) until acknowledged |
//! | [`link`] | the QUIC link: pinned coordinator key, framing, blob download and upload |
//! | [`cache`] | blobs by digest and compiled modules on disk, checked, under one LRU size budget |
//! | [`pool`] | memory slots for guests: fixed size classes (pooled, warm) and a variable pool |
//! | [`checkpoint`] | guests' checkpoints: kept in the cache, reported before their attempt's result, restored |
//! | [`runner`] | one assignment: checks (memory cap, signatures, compile), directories, threads, result |
//! | [`disk`] | a task's disk cap, watched while it runs; the free disk the agent keeps |
//! | [`sandbox`] | wasmtime + WASI with memory, time and output caps; pause, CPU share, eviction, idle priority |
//! | [`scavenger`] | the thread that feeds the sampler's readings to the policy and applies its decisions |
//! | [`sampler`] | what the machine offers and how busy its own programs keep it |
//! | [`owner`] | the owner's local commands (`lull-agent pause/resume/stop/status`) over a Unix socket |
//! | [`policy`] | when guests may run, pause, slow down or must leave; pure, time comes in |

pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod daemon;
pub mod disk;
pub mod enroll;
pub mod install;
pub mod link;
pub mod outbox;
pub mod owner;
pub mod policy;
pub mod pool;
pub mod rules;
pub mod runner;
pub mod sampler;
pub mod sandbox;
pub mod scavenger;
pub mod selftest;
#[cfg(windows)]
pub mod winservice;
pub mod workdir;

pub use config::AgentConfig;
pub use daemon::Agent;

/// Lets a closed pipe end a short command quietly, as other Unix tools do (`lull status | head`),
/// where Rust would otherwise panic in `println!`. Not for the long-running commands: they keep
/// Rust's default (a write to a closed pipe is an error to handle).
pub fn quiet_on_closed_pipe() {
    // SAFETY: sets SIGPIPE back to its default disposition for the whole process; no handler
    // runs, and nothing in the program relies on SIGPIPE being ignored for pipes.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
