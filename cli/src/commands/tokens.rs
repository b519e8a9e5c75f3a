//! `lull tokens list`, `lull tokens create`, `lull tokens delete ID`: managing the
//! coordinator's tokens from anywhere, with an `operate` token for every cluster.

use std::process::ExitCode;

use lull_protocol::api::{TokenCreated, TokenInfo, TokensDeleted};

use crate::client::Client;
use crate::table::{Align, Table};

/// `lull tokens`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// List the tokens (their ids, never the tokens themselves).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a token and print it (it is shown this once): a person's with --user, else an
    /// agent's join token.
    Create {
        #[command(flatten)]
        token: lull_coordinator::token_args::NewTokenArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the tokens whose id starts with ID (at least 6 hex digits): cut off at once.
    Delete {
        /// The id, as `lull tokens list` shows it.
        id: String,
    },
}

/// Runs `lull tokens ...`.
pub async fn run(client: &Client, command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List { json } => {
            let tokens: Vec<TokenInfo> = client.get("/api/v1/tokens").await?;
            if json {
                super::print_json(&tokens)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&[
                ("ID", Align::Left),
                ("KIND", Align::Left),
                ("USER", Align::Left),
                ("ROLE", Align::Left),
                ("CLUSTER(S)", Align::Left),
                ("GROUPS", Align::Left),
                ("USES LEFT", Align::Right),
                ("DESCRIPTION", Align::Left),
            ]);
            for t in tokens {
                let reach = t.reach();
                let groups = t.groups_shown();
                let role = if t.role.is_empty() {
                    "-".into()
                } else {
                    t.role
                };
                table.row(vec![
                    t.id,
                    t.kind,
                    if t.user.is_empty() {
                        "-".into()
                    } else {
                        t.user
                    },
                    role,
                    reach,
                    groups,
                    t.uses_left.map_or("unlimited".into(), |n| n.to_string()),
                    t.description,
                ]);
            }
            table.print();
        }
        Command::Create { token, json } => {
            let made: TokenCreated = client.post("/api/v1/tokens", &token.request()).await?;
            if json {
                super::print_json(&made)?;
            } else {
                println!("{}", made.token);
                let i = &made.info;
                eprintln!(
                    "token {}: {}, {}",
                    i.id,
                    i.describe(),
                    i.uses_left
                        .map_or("any number of uses".to_owned(), |n| format!("{n} use(s)"))
                );
            }
        }
        Command::Delete { id } => {
            let done: TokensDeleted = client.delete(&format!("/api/v1/tokens/{id}")).await?;
            println!("deleted {} token(s)", done.deleted);
        }
    }
    Ok(ExitCode::SUCCESS)
}
