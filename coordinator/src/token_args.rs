//! The arguments that make a token, shared by `lull-coordinator token create` (on the
//! coordinator's machine) and `lull tokens create` (through the API), so that both take the
//! same flags and mean the same by them. The checks and defaults are the store's
//! ([`crate::store::Store::issue_token`]).

use std::time::Duration;

use lull_protocol::api::{NewToken, Role};

/// What a new token is for and how long it works.
#[derive(clap::Args, Debug, Clone)]
pub struct NewTokenArgs {
    /// A person's token belonging to user NAME, instead of an agent's join token: jobs
    /// submitted with it are NAME's.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// With --user: what the token may do: `submit` (submit, and see and change only NAME's
    /// jobs), `read` (see everything, change nothing) or `operate` (everything: every job,
    /// agents, clusters, tokens) [default: submit].
    #[arg(long, requires = "user")]
    pub role: Option<Role>,
    /// With --user: limit the token to these clusters (comma-separated): it submits only into
    /// them and sees only their jobs and agents [default: every cluster].
    #[arg(
        long,
        requires = "user",
        value_delimiter = ',',
        value_name = "CLUSTER,..."
    )]
    pub clusters: Vec<String>,
    /// With --user: the groups NAME's jobs may be counted in, for group quotas
    /// (comma-separated); a job names one with `group = "..."`, and one naming none is
    /// counted in the first [default: none].
    #[arg(
        long,
        requires = "user",
        value_delimiter = ',',
        value_name = "GROUP,..."
    )]
    pub groups: Vec<String>,
    /// For an agent's join token: whose machines it enrolls (their lender), credited in the
    /// accounting with the CPU they give.
    #[arg(long, conflicts_with = "user", value_name = "NAME")]
    pub owner: Option<String>,
    /// For an agent's join token: the cluster it enrolls into (`lull clusters create` makes
    /// clusters) [default: default].
    #[arg(long, conflicts_with = "user")]
    pub cluster: Option<String>,
    /// How long it works, e.g. 1h, 7d; 0 for ever [default: 24h for an agent's token, 90d for
    /// a person's].
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// Enrollments (an agent's token) or submissions (a person's) it allows; 0 for any number
    /// [default: 1 for an agent's token, any number for a person's].
    #[arg(long)]
    pub uses: Option<u32>,
    /// A note for people: whom or what the token is for.
    #[arg(long, default_value = "")]
    pub description: String,
}

impl NewTokenArgs {
    /// The request these arguments make.
    pub fn request(&self) -> NewToken {
        NewToken {
            user: self.user.clone(),
            role: self.role,
            clusters: self.clusters.clone(),
            groups: self.groups.clone(),
            owner: self.owner.clone(),
            cluster: self.cluster.clone(),
            ttl_ms: self
                .ttl
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            uses: self.uses,
            description: self.description.clone(),
        }
    }
}

/// A token's lifetime: a duration, or `0` for ever.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    lull_protocol::units::parse_duration(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_durations_or_zero_for_ever() {
        assert_eq!(parse_ttl("0"), Ok(Duration::ZERO));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_ttl("soon").is_err());
    }
}
