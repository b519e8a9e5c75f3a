//! Pieces shared by Lull's fuzz targets (`fuzz_targets/`, run with `cargo +nightly fuzz`).
//!
//! | module | owns |
//! |---|---|
//! | [`script`] | the scripts of guest host calls that `host_calls` plays |
//! | `host_calls` (feature `agent`) | the `host_calls` target's guest, fixture and properties |
//!
//! `host_calls` and `script` are also compiled into the main workspace's
//! `tests/tests/host_calls_fuzz.rs`, which plays the seeds and random inputs on the stable
//! toolchain in every `cargo xtask test`: they use nothing of this crate but each other.

#[cfg(feature = "agent")]
pub mod host_calls;
pub mod script;
