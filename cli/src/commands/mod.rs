//! One module per command.

pub mod agents;
pub mod cancel;
pub mod clusters;
pub mod delete;
pub mod dev;
pub mod drain;
pub mod keys;
pub mod logs;
pub mod results;
pub mod status;
pub mod submit;
pub mod tokens;
pub mod workflow;

/// Prints a value as pretty JSON.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}
