//! `lull clusters list`, `lull clusters create ID`, `lull clusters quotas ID`,
//! `lull clusters quota ID USER ...`.

use std::process::ExitCode;

use lull_protocol::api::{Cluster, ClusterCreated, ClusterSettings, NewCluster, Quota, SetQuota};

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
    /// Change a cluster's settings (needs an operate token).
    Set {
        /// The cluster.
        id: String,
        /// Whether waiting work may evict running work that stands in its way (a user fair
        /// share serves after it, or a lower priority of its own user): on or off.
        #[arg(long, value_parser = parse_on_off, value_name = "on|off")]
        preempt: Option<bool>,
    },
    /// List a cluster's quotas: what each user may run at once.
    Quotas {
        /// The cluster.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set or remove a user's or a group's quota in a cluster (needs an operate token): past
    /// it, their tasks wait while others' run.
    #[command(
        after_help = "Examples:\n  lull clusters quota default alice --max-tasks 8\n  lull clusters quota default '*' --max-cores 16   (everyone without a quota of their own)\n  lull clusters quota default alice --remove\n  lull clusters quota default @physics --max-tasks 20   (the jobs of group physics, together)\n\nA job is in a group when it says `group = \"physics\"`, or by default when its\nsubmitter's token has groups (`lull tokens create --user NAME --groups physics`).\nA task starts only when neither its user's quota nor its group's is reached."
    )]
    Quota {
        /// The cluster.
        id: String,
        /// The user, '*' for everyone without a quota of their own, or '@GROUP' for the jobs
        /// of a group together.
        user: String,
        /// Tasks running at once.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_tasks: Option<u32>,
        /// Cores reserved at once (the tasks' `cpu`), e.g. 16 or 2.5.
        #[arg(long)]
        max_cores: Option<f64>,
        /// Remove the quota.
        #[arg(long, conflicts_with_all = ["max_tasks", "max_cores"])]
        remove: bool,
    },
}

fn print_quotas(id: &str, quotas: &[Quota]) {
    if quotas.is_empty() {
        println!("cluster {id} has no quotas: every user and group may use all of it");
        return;
    }
    let mut table = Table::new(&[
        ("USER/@GROUP", Align::Left),
        ("MAX TASKS", Align::Right),
        ("MAX CORES", Align::Right),
    ]);
    for q in quotas {
        table.row(vec![
            q.user.clone(),
            q.max_tasks.map_or("-".to_owned(), |n| n.to_string()),
            q.max_cores.map_or("-".to_owned(), |c| format!("{c}")),
        ]);
    }
    table.print();
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
                ("PREEMPT", Align::Left),
                ("DESCRIPTION", Align::Left),
            ]);
            for c in clusters {
                table.row(vec![
                    c.id,
                    c.agents_connected.to_string(),
                    c.agents_enrolled.to_string(),
                    if c.preempt { "on" } else { "off" }.to_owned(),
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
        Command::Set { id, preempt } => {
            if preempt.is_none() {
                anyhow::bail!("nothing to change: give --preempt on|off");
            }
            let c: Cluster = client
                .patch(
                    &format!("/api/v1/clusters/{id}"),
                    &ClusterSettings { preempt },
                )
                .await?;
            println!(
                "cluster {}: preemption {}",
                c.id,
                if c.preempt { "on" } else { "off" }
            );
        }
        Command::Quotas { id, json } => {
            let quotas: Vec<Quota> = client.get(&format!("/api/v1/clusters/{id}/quotas")).await?;
            if json {
                super::print_json(&quotas)?;
            } else {
                print_quotas(&id, &quotas);
            }
        }
        Command::Quota {
            id,
            user,
            max_tasks,
            max_cores,
            remove,
        } => {
            if !remove && max_tasks.is_none() && max_cores.is_none() {
                anyhow::bail!("give --max-tasks N and/or --max-cores C, or --remove");
            }
            let path = format!("/api/v1/clusters/{id}/quotas/{}", encode_user(&user));
            let quotas: Vec<Quota> = if remove {
                client.delete(&path).await?
            } else {
                client
                    .put(
                        &path,
                        &SetQuota {
                            max_tasks,
                            max_cores,
                        },
                    )
                    .await?
            };
            print_quotas(&id, &quotas);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A user's name in a path: `*` is written `%2A` (user names hold nothing else to escape).
fn encode_user(user: &str) -> String {
    user.replace('*', "%2A")
}

/// `on` or `off`.
fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?} is neither on nor off")),
    }
}
