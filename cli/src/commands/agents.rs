//! `lull agents`.

use std::process::ExitCode;

use lull_protocol::units::format_size;

use crate::client::Client;

/// `lull agents`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Lists the connected agents.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    let agents: Vec<serde_json::Value> = client.get("/api/v1/agents").await?;
    if args.json {
        super::print_json(&agents)?;
        return Ok(ExitCode::SUCCESS);
    }
    if agents.is_empty() {
        println!("no agent is connected (start one with `lull-agent run`, or try `lull dev`)");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<14} {:>5} {:>7} {:>10} {:>10}  OS/ARCH",
        "ID", "NAME", "CORES", "RUNNING", "MEMORY", "TASK CAP"
    );
    for a in agents {
        let c = &a["capacity"];
        let st = &a["status"];
        println!(
            "{:<20} {:<14} {:<16} {:>5} {:>3}/{:<3} {:>10} {:>10}  {:<12} {}",
            a["id"].as_str().unwrap_or("?"),
            a["name"].as_str().unwrap_or("?"),
            st["state"].as_str().unwrap_or("?"),
            c["cores"].to_string(),
            a["running"].to_string(),
            c["slots"].to_string(),
            format_size(c["memory_available"].as_u64().unwrap_or(0)),
            format_size(c["max_task_memory"].as_u64().unwrap_or(0)),
            format!(
                "{}/{}",
                c["os"].as_str().unwrap_or("?"),
                c["arch"].as_str().unwrap_or("?")
            ),
            st["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(ExitCode::SUCCESS)
}
