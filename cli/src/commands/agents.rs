//! `lull agents`, and `lull agents revoke ID`.

use std::process::ExitCode;

use lull_protocol::api::{Agent, Revoked};
use lull_protocol::units::format_size;

use crate::client::Client;
use crate::table::{Align, Table};

/// `lull agents`.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<AgentsCommand>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum AgentsCommand {
    /// Cut an agent off for good: its connection is closed at once, its running tasks go back
    /// to the queue, and it is never admitted again (a machine that should come back enrolls
    /// anew, with a new ID, after `lull-agent uninstall --purge`).
    Revoke {
        /// The agent's ID, as `lull agents` lists it.
        id: String,
    },
}

/// Lists the connected agents, or revokes one.
pub async fn run(client: &Client, args: Args) -> anyhow::Result<ExitCode> {
    if let Some(AgentsCommand::Revoke { id }) = args.command {
        let revoked: Revoked = client
            .post_empty(&format!("/api/v1/agents/{id}/revoke"))
            .await?;
        println!(
            "agent {id} revoked; {} task(s) it was running went back to the queue",
            revoked.requeued
        );
        return Ok(ExitCode::SUCCESS);
    }
    let agents: Vec<Agent> = client.get("/api/v1/agents").await?;
    if args.json {
        super::print_json(&agents)?;
        return Ok(ExitCode::SUCCESS);
    }
    if agents.is_empty() {
        println!("no agent is connected (start one with `lull-agent run`, or try `lull dev`)");
        return Ok(ExitCode::SUCCESS);
    }
    // Agents whose results for `verify` jobs were outvoted: a column only when there are some.
    let disagreed = agents.iter().any(|a| a.disagreements > 0);
    let mut columns = vec![
        ("ID", Align::Left),
        ("NAME", Align::Left),
        ("CLUSTER", Align::Left),
        ("STATE", Align::Left),
        ("CORES", Align::Right),
        ("RUNNING", Align::Right),
        ("MEMORY", Align::Right),
        ("TASK CAP", Align::Right),
        ("OS/ARCH", Align::Left),
    ];
    if disagreed {
        columns.push(("DISAGREED", Align::Right));
    }
    columns.push(("WHY", Align::Left));
    let mut table = Table::new(&columns);
    for a in agents {
        let c = &a.capacity;
        let state = if a.draining_until_ms.is_some() {
            "draining".to_owned()
        } else {
            a.status.state.name().to_owned()
        };
        let mut row = vec![
            a.id,
            a.name,
            a.cluster,
            state,
            c.cores.to_string(),
            format!("{}/{}", a.running, c.slots),
            format_size(c.memory_available),
            format_size(c.max_task_memory),
            format!("{}/{}", c.os, c.arch),
        ];
        if disagreed {
            row.push(a.disagreements.to_string());
        }
        row.push(a.status.reason);
        table.row(row);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
