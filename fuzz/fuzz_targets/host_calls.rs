//! The `host_calls` target: the agent's side of `lull:guest/host` with arbitrary arguments,
//! through a real component in the real sandbox. The guest, the script it plays and the
//! properties checked are in `lull_fuzz::host_calls`, which `cargo xtask test` also plays on
//! the seeds and on random inputs (`tests/tests/host_calls_fuzz.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lull_fuzz::host_calls::run(data));
