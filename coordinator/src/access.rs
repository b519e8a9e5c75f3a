//! Who may do what on the people's API. Pure rules over a [`Principal`] (the user, role and
//! clusters of the request's token) and what a request touches; the HTTP routes ask before
//! they act and answer a refusal with 403 and its reason.
//!
//! | role | jobs | agents | clusters, tokens |
//! |---|---|---|---|
//! | `submit` | submit; see, cancel, delete, download **their own** | see | see |
//! | `read` | see all | see | see |
//! | `operate` | everything | see, drain, revoke | make (when not limited to clusters) |
//!
//! A token limited to clusters sees and acts only within them: it submits only into them, sees
//! only their jobs and agents, and (with `operate`) drains only their agents. Making clusters and
//! tokens, which reach every cluster, needs an `operate` token without such a limit.

use lull_protocol::api::Role;

/// The holder of a request's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's name.
    pub user: String,
    /// What the token lets them do.
    pub role: Role,
    /// The clusters the token is limited to; `None`: every cluster.
    pub clusters: Option<Vec<String>>,
    /// The groups the user's jobs may be counted in (the first is the default).
    pub groups: Vec<String>,
}

/// Why a request was refused, for people: said in the 403 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

/// Which jobs a principal may see, as a filter the store applies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this user's jobs.
    pub owner: Option<String>,
    /// Only jobs in these clusters.
    pub clusters: Option<Vec<String>>,
}

impl JobFilter {
    /// Whether a job of `owner` in `cluster` passes.
    pub fn admits(&self, owner: &str, cluster: &str) -> bool {
        self.owner.as_deref().is_none_or(|o| o == owner)
            && self
                .clusters
                .as_ref()
                .is_none_or(|cs| cs.iter().any(|c| c == cluster))
    }
}

/// The user of a development cluster (`lull dev`), which needs no token.
pub const DEV_USER: &str = "local";

impl Principal {
    /// Whoever uses a development cluster: everything, everywhere.
    pub fn dev() -> Self {
        Self {
            user: DEV_USER.to_owned(),
            role: Role::Operate,
            clusters: None,
            groups: Vec::new(),
        }
    }

    /// Whether this principal sees every job and agent (a `read` or `operate` token for every
    /// cluster): it is shown what everyone such is shown.
    pub fn sees_everything(&self) -> bool {
        self.role != Role::Submit && self.clusters.is_none()
    }

    /// The view of everything, for what is made once and shown to all who see everything.
    pub fn everything() -> Self {
        Self {
            user: String::new(),
            role: Role::Read,
            clusters: None,
            groups: Vec::new(),
        }
    }

    /// Who this is, for messages: `alice (submit)`.
    fn who(&self) -> String {
        format!("{} ({})", self.user, self.role)
    }

    /// Whether the token reaches `cluster`.
    pub fn reaches(&self, cluster: &str) -> bool {
        self.clusters
            .as_ref()
            .is_none_or(|cs| cs.iter().any(|c| c == cluster))
    }

    /// Seeing or touching anything of `cluster` (`doing`: "agent a-1", "cluster lab").
    pub fn may_reach(&self, doing: &str, cluster: &str) -> Result<(), Denied> {
        self.in_cluster(cluster, doing)
    }

    fn in_cluster(&self, cluster: &str, doing: &str) -> Result<(), Denied> {
        if self.reaches(cluster) {
            return Ok(());
        }
        let list = self.clusters.as_deref().unwrap_or_default().join(", ");
        Err(Denied(format!(
            "{doing}: the token of {} is limited to cluster(s) {list}, not {cluster}",
            self.who()
        )))
    }

    /// Submitting a job into `cluster`, or uploading its files (`cluster` `None`).
    pub fn may_submit(&self, cluster: Option<&str>) -> Result<(), Denied> {
        if self.role == Role::Read {
            return Err(Denied(format!(
                "submitting: the token of {} may only look (submitting needs the submit or \
                 operate role)",
                self.who()
            )));
        }
        match cluster {
            Some(cluster) => self.in_cluster(cluster, "submitting"),
            None => Ok(()),
        }
    }

    /// The group a job it submits is counted in, given the job's `group` (if any): one of the
    /// token's groups, or any group for an `operate` token (operators submit for anyone); with
    /// none asked for, the token's first group, if it has one.
    pub fn job_group(&self, asked: Option<&str>) -> Result<Option<String>, Denied> {
        let Some(group) = asked else {
            return Ok(self.groups.first().cloned());
        };
        if self.role == Role::Operate || self.groups.iter().any(|g| g == group) {
            return Ok(Some(group.to_owned()));
        }
        let has = if self.groups.is_empty() {
            "is in no group".to_owned()
        } else {
            format!("is in group(s) {}", self.groups.join(", "))
        };
        Err(Denied(format!(
            "group {group}: the token of {} {has} (an operator gives groups with `lull tokens \
             create --user {} --groups ...`)",
            self.who(),
            self.user
        )))
    }

    /// Which jobs this principal may see.
    pub fn job_filter(&self) -> JobFilter {
        JobFilter {
            owner: (self.role == Role::Submit).then(|| self.user.clone()),
            clusters: self.clusters.clone(),
        }
    }

    /// Seeing job `id` (its tasks, results, definition) of `owner` in `cluster`.
    pub fn may_see_job(&self, id: u64, owner: &str, cluster: &str) -> Result<(), Denied> {
        self.in_cluster(cluster, &format!("job {id}"))?;
        if self.role == Role::Submit && owner != self.user {
            return Err(Denied(format!(
                "job {id} belongs to {owner}: the token of {} sees only its own jobs (seeing \
                 others' needs the read or operate role)",
                self.who()
            )));
        }
        Ok(())
    }

    /// Cancelling or deleting (`doing`) job `id` of `owner` in `cluster`.
    pub fn may_change_job(
        &self,
        doing: &str,
        id: u64,
        owner: &str,
        cluster: &str,
    ) -> Result<(), Denied> {
        self.in_cluster(cluster, &format!("{doing} job {id}"))?;
        match self.role {
            Role::Operate => Ok(()),
            Role::Submit if owner == self.user => Ok(()),
            Role::Submit => Err(Denied(format!(
                "{doing} job {id}: it belongs to {owner}, and the token of {} may change only its \
                 own jobs",
                self.who()
            ))),
            Role::Read => Err(Denied(format!(
                "{doing} job {id}: the token of {} may only look (changing others' jobs needs \
                 the operate role)",
                self.who()
            ))),
        }
    }

    /// Acting on an agent of `cluster` (`doing`: "draining agent X").
    pub fn may_operate(&self, doing: &str, cluster: &str) -> Result<(), Denied> {
        if self.role != Role::Operate {
            return Err(Denied(format!(
                "{doing}: needs the operate role, and the token of {} has {}",
                self.who(),
                self.role
            )));
        }
        self.in_cluster(cluster, doing)
    }

    /// Changing what reaches every cluster: making clusters, managing tokens.
    pub fn may_administer(&self, doing: &str) -> Result<(), Denied> {
        if self.role != Role::Operate {
            return Err(Denied(format!(
                "{doing}: needs the operate role, and the token of {} has {}",
                self.who(),
                self.role
            )));
        }
        match &self.clusters {
            None => Ok(()),
            Some(cs) => Err(Denied(format!(
                "{doing}: needs a token for every cluster, and the token of {} is limited to {}",
                self.who(),
                cs.join(", ")
            ))),
        }
    }

    /// Reading what spans every user and cluster (`/metrics`).
    pub fn may_read_everything(&self, doing: &str) -> Result<(), Denied> {
        if self.role == Role::Submit || self.clusters.is_some() {
            return Err(Denied(format!(
                "{doing}: needs a read or operate token for every cluster, and the token of {} \
                 is not one",
                self.who()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str, role: Role, clusters: Option<&[&str]>) -> Principal {
        Principal {
            user: user.to_owned(),
            role,
            clusters: clusters.map(|cs| cs.iter().map(|c| (*c).to_owned()).collect()),
            groups: Vec::new(),
        }
    }

    #[test]
    fn jobs_are_counted_in_the_tokens_groups_only() {
        let mut alice = who("alice", Role::Submit, None);
        assert_eq!(alice.job_group(None), Ok(None));
        let refused = alice.job_group(Some("physics")).unwrap_err().0;
        assert!(
            refused.contains("group physics") && refused.contains("is in no group"),
            "{refused}"
        );
        alice.groups = vec!["physics".into(), "chem".into()];
        assert_eq!(alice.job_group(None), Ok(Some("physics".into())));
        assert_eq!(alice.job_group(Some("chem")), Ok(Some("chem".into())));
        let refused = alice.job_group(Some("bio")).unwrap_err().0;
        assert!(
            refused.contains("is in group(s) physics, chem"),
            "{refused}"
        );
        let operator = who("root", Role::Operate, None);
        assert_eq!(operator.job_group(Some("bio")), Ok(Some("bio".into())));
        assert_eq!(operator.job_group(None), Ok(None));
    }

    #[test]
    fn submitters_see_and_change_only_their_own_jobs() {
        let alice = who("alice", Role::Submit, None);
        assert!(alice.may_submit(Some("default")).is_ok());
        assert!(alice.may_submit(None).is_ok());
        assert!(alice.may_see_job(1, "alice", "default").is_ok());
        assert!(
            alice
                .may_change_job("cancelling", 1, "alice", "default")
                .is_ok()
        );
        let seen = alice.may_see_job(2, "bob", "default").unwrap_err().0;
        assert!(seen.contains("job 2 belongs to bob"), "{seen}");
        let changed = alice
            .may_change_job("cancelling", 2, "bob", "default")
            .unwrap_err()
            .0;
        assert!(
            changed.contains("cancelling job 2") && changed.contains("bob"),
            "{changed}"
        );
        assert_eq!(
            alice.job_filter(),
            JobFilter {
                owner: Some("alice".into()),
                clusters: None
            }
        );
        assert!(alice.may_operate("draining agent a", "default").is_err());
        assert!(alice.may_administer("making a cluster").is_err());
        assert!(alice.may_read_everything("metrics").is_err());
    }

    #[test]
    fn readers_see_everything_and_change_nothing() {
        let reader = who("auditor", Role::Read, None);
        assert!(reader.may_see_job(2, "bob", "default").is_ok());
        assert_eq!(reader.job_filter(), JobFilter::default());
        let submit = reader.may_submit(Some("default")).unwrap_err().0;
        assert!(submit.contains("may only look"), "{submit}");
        assert!(reader.may_submit(None).is_err(), "no uploads either");
        assert!(
            reader
                .may_change_job("deleting", 2, "bob", "default")
                .is_err()
        );
        assert!(
            reader
                .may_change_job("deleting", 3, "auditor", "default")
                .is_err(),
            "not even its own"
        );
        assert!(reader.may_operate("revoking agent a", "default").is_err());
        assert!(reader.may_read_everything("metrics").is_ok());
    }

    #[test]
    fn operators_do_everything_within_their_clusters() {
        let root = who("root", Role::Operate, None);
        assert!(root.may_change_job("cancelling", 2, "bob", "gpu").is_ok());
        assert!(root.may_operate("draining agent a", "gpu").is_ok());
        assert!(root.may_administer("making a cluster").is_ok());

        let lab = who("lab-admin", Role::Operate, Some(&["lab"]));
        assert!(lab.may_operate("draining agent a", "lab").is_ok());
        let err = lab.may_operate("draining agent b", "gpu").unwrap_err().0;
        assert!(
            err.contains("draining agent b") && err.contains("limited to cluster(s) lab"),
            "{err}"
        );
        assert!(lab.may_administer("making a cluster").is_err());
        assert!(lab.may_read_everything("metrics").is_err());
        assert!(lab.may_see_job(2, "bob", "gpu").is_err());
        assert!(lab.may_reach("agent a-1", "lab").is_ok());
        let err = lab.may_reach("agent a-2", "gpu").unwrap_err().0;
        assert!(
            err.starts_with("agent a-2: the token of lab-admin"),
            "{err}"
        );
        assert!(lab.job_filter().admits("bob", "lab"));
        assert!(!lab.job_filter().admits("bob", "gpu"));
    }

    #[test]
    fn cluster_limited_tokens_submit_only_into_their_clusters() {
        let ci = who("ci", Role::Submit, Some(&["ci", "spare"]));
        assert!(ci.may_submit(Some("spare")).is_ok());
        let err = ci.may_submit(Some("default")).unwrap_err().0;
        assert!(
            err.starts_with("submitting:") && err.contains("ci, spare, not default"),
            "{err}"
        );
        let filter = ci.job_filter();
        assert!(filter.admits("ci", "spare"));
        assert!(!filter.admits("ci", "default"));
        assert!(!filter.admits("other", "spare"));
    }

    #[test]
    fn the_dev_user_does_everything() {
        let dev = Principal::dev();
        assert!(dev.may_administer("making a cluster").is_ok());
        assert!(dev.may_change_job("deleting", 1, "anyone", "x").is_ok());
        assert!(dev.may_read_everything("metrics").is_ok());
    }
}
