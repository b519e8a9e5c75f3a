//! Pieces shared by Lull's fuzz targets (`fuzz_targets/`, run with `cargo +nightly fuzz`).
//!
//! | module | owns |
//! |---|---|
//! | [`script`] | the scripts of guest host calls that `host_calls` plays |

pub mod script;
