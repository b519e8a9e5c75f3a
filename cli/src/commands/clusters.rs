//! `lull clusters list`, `lull clusters create ID`.

use std::process::ExitCode;

use lull_protocol::api::{Cluster, ClusterCreated, NewCluster};

use crate::client::Client;
use crate::table::{Align, Table};

/// `lull clusters`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the clusters, with their agents.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a cluster; agents join it with join tokens made with
    /// `lull-coordinator token create --cluster ID`, jobs name it with `cluster = "ID"`.
    Create {
        /// Its ID: lower-case letters, digits and -.
        id: String,
        /// A note for people.
        #[arg(long, default_value = "")]
        description: String,
    },
}

/// Runs `lull clusters ...`.
pub async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List { json } => {
            let clusters: Vec<Cluster> = client.get("/api/v1/clusters").await?;
            if json {
                super::print_json(&clusters)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&[
                ("CLUSTER", Align::Left),
                ("CONNECTED", Align::Right),
                ("ENROLLED", Align::Right),
                ("DESCRIPTION", Align::Left),
            ]);
            for c in clusters {
                table.row(vec![
                    c.id,
                    c.agents_connected.to_string(),
                    c.agents_enrolled.to_string(),
                    c.description,
                ]);
            }
            table.print();
        }
        Command::Create { id, description } => {
            let _: ClusterCreated = client
                .post(
                    "/api/v1/clusters",
                    &NewCluster {
                        id: id.clone(),
                        description,
                    },
                )
                .await?;
            println!(
                "cluster {id} created\n  enroll agents into it: lull-coordinator token create --cluster {id}\n  run jobs on it:        cluster = \"{id}\" in the job file"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
