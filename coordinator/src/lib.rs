//! The Lull coordinator: keeps jobs durably, places their tasks on agents over QUIC, and
//! collects results.
//!
//! | module | owns |
//! |---|---|
//! | [`server`] | QUIC for agents, HTTP for people, and the live state between them (`hub`) |
//! | [`store`] | jobs, tasks, attempts, checkpoints and agents in SQLite (WAL, full sync) or PostgreSQL; persists what the dispatch core decides |
//! | `lull_scheduler` (a crate) | placement of pending tasks on agents: strategies, constraints, reservations; pure |
//! | `lull_dispatch` (a crate) | the task state machine: assignments, leases, retries and backoff, drains, cancels; pure, time comes in |
//! | [`clock`] | the one reading of the wall clock |
//! | [`access`] | who may do what on the people's API: users, roles, clusters; pure |
//! | [`backup`] | a consistent copy of the data directory while the coordinator runs |
//! | [`blobs`] | the content-addressed (sha256) blob store on disk: resumable chunked uploads, collection of unreferenced blobs |
//! | [`tls`] | the coordinator's key and self-signed certificate, pinned by agents |
//! | [`token_args`] | the flags that make a token, shared by the coordinator's and `lull`'s commands |

pub mod access;
pub mod backup;
pub mod blobs;
pub mod clock;
pub mod server;
pub mod store;
pub mod tls;
pub mod token_args;
