//! Tokens: secrets that let an agent enroll (`agent`, usually single-use and short-lived) or a
//! person use the HTTP API (`submitter`: a user's, with a role, perhaps limited to clusters).
//! Only a token's sha256 is stored; the token itself is shown once, when it is made.
//!
//! A person's token with a number of uses counts submissions: each accepted job takes one, and
//! a used-up token still lets its holder watch and download.

use std::fmt;

use lull_protocol::Digest;
use lull_protocol::api::Role;
use rand::RngCore;
use sqlx::Row;

use super::{Result, Store};

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Enroll an agent.
    Agent,
    /// Use the HTTP API: submit, watch, cancel, download.
    Submitter,
}

impl TokenKind {
    /// The name stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Agent => "agent",
            TokenKind::Submitter => "submitter",
        }
    }
}

/// A new token's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// What it is for.
    pub kind: TokenKind,
    /// When it stops working (ms since the Unix epoch); `None`: never.
    pub expires_ms: Option<i64>,
    /// How many times it may be used; `None`: any number.
    pub uses: Option<u32>,
    /// A note for people (whom it is for).
    pub description: String,
    /// For an agent's join token: the cluster it enrolls agents into.
    pub cluster: String,
    /// For a person's token: whose it is.
    pub user: String,
    /// For a person's token: what it may do (`None` for an agent's).
    pub role: Option<Role>,
    /// For a person's token: the clusters it is limited to (empty: every cluster).
    pub clusters: Vec<String>,
    /// For a person's token: the groups its jobs may be counted in (the first is the default).
    pub groups: Vec<String>,
}

/// What an accepted token is: whose, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// An agent's join token: the cluster it enrolls into.
    pub cluster: String,
    /// A person's token: the user.
    pub user: String,
    /// A person's token: the role (tokens of a newer coordinator's roles are refused).
    pub role: Option<Role>,
    /// A person's token: the clusters it is limited to; `None`: every cluster.
    pub clusters: Option<Vec<String>>,
    /// A person's token: the groups its jobs may be counted in (the first is the default).
    pub groups: Vec<String>,
}

/// Why a token was not accepted. The messages say what happened without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Not a token of this coordinator (or deleted).
    #[error("unknown token")]
    Unknown,
    /// A token for something else (an agent's join token used as a submitter's, or the reverse).
    #[error("it is a token for another use ({0})")]
    WrongKind(&'static str),
    /// Past its expiry.
    #[error("the token expired")]
    Expired,
    /// Used as many times as it allowed.
    #[error("the token has been used up")]
    UsedUp,
    /// A person's token whose role this coordinator does not know.
    #[error("the token has a role this coordinator does not know ({0:?})")]
    UnknownRole(String),
}

pub use lull_protocol::api::TokenInfo;

/// A token's secret text: `lull_` and 40 hex digits (160 random bits).
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh random token.
    fn generate() -> Token {
        let mut bytes = [0u8; 20];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Token(format!("lull_{}", hex::encode(bytes)))
    }

    /// The text to hand to its holder.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Why a token could not be made: the field and the reason, for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenSpecError(pub String);

/// How long a token works when nothing says: a day for an agent's, 90 days for a person's.
const AGENT_TTL_MS: u64 = 24 * 3600 * 1000;
const PERSON_TTL_MS: u64 = 90 * 24 * 3600 * 1000;

/// How a token is stored and looked up.
fn token_hash(token: &str) -> String {
    Digest::of(token.trim().as_bytes()).to_string()
}

impl Store {
    /// Makes a token and stores its hash; the token is returned once and never again.
    pub async fn create_token(&self, spec: &TokenSpec, now_ms: i64) -> Result<Token> {
        let token = Token::generate();
        sqlx::query(
            "INSERT INTO tokens (hash, kind, created_ms, expires_ms, uses_left, description, cluster, \
             user_name, role, clusters, groups) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(token_hash(token.as_str()))
        .bind(spec.kind.as_str())
        .bind(now_ms)
        .bind(spec.expires_ms)
        .bind(spec.uses.map(i64::from))
        .bind(&spec.description)
        .bind(&spec.cluster)
        .bind(&spec.user)
        .bind(spec.role.map_or("", Role::as_str))
        .bind(spec.clusters.join(","))
        .bind(spec.groups.join(","))
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Checks `token` for `kind` at `now_ms` and, when `consume`, counts one use of it (in one
    /// write transaction, so a single-use token admits exactly one of two racing holders; a
    /// check alone is a plain read, taking no write lock, as every API request makes one).
    /// A check alone of a person's token does not look at its uses: they count submissions.
    /// The outer error is the database's; the inner one why the token was refused.
    pub async fn use_token(
        &self,
        token: &str,
        kind: TokenKind,
        consume: bool,
        now_ms: i64,
    ) -> Result<std::result::Result<Grant, TokenRefusal>> {
        if !consume {
            let row = sqlx::query(FIND_TOKEN)
                .bind(token_hash(token))
                .fetch_optional(&self.pool)
                .await?;
            let uses_count = kind == TokenKind::Agent;
            return Ok(judge(row.as_ref(), kind, now_ms, uses_count));
        }
        let mut tx = self.begin_write().await?;
        let verdict = take_token(&mut tx, token, kind, now_ms).await?;
        tx.commit().await?;
        Ok(verdict)
    }

    /// Makes a token from a request, with its defaults, after checking it: names, clusters
    /// that exist. Returns the token (shown once) and how it is listed.
    pub async fn issue_token(
        &self,
        req: &lull_protocol::api::NewToken,
        now_ms: i64,
    ) -> Result<std::result::Result<(Token, TokenInfo), TokenSpecError>> {
        use lull_protocol::api::check_user_name;
        let fail = |m: String| Ok(Err(TokenSpecError(m)));
        let kind = if req.user.is_some() {
            TokenKind::Submitter
        } else {
            TokenKind::Agent
        };
        match (&req.user, &req.owner) {
            (Some(_), Some(_)) => {
                return fail("user and owner: a token is either a person's (user) or an agent's join token (owner)".into());
            }
            (Some(name), None) | (None, Some(name)) => {
                if let Err(e) = check_user_name(name) {
                    let field = if req.user.is_some() { "user" } else { "owner" };
                    return fail(format!("{field}: {e}"));
                }
            }
            (None, None) => {}
        }
        if kind == TokenKind::Agent
            && (req.role.is_some() || !req.clusters.is_empty() || !req.groups.is_empty())
        {
            return fail(
                "role, clusters and groups belong to a person's token: give its user".into(),
            );
        }
        if req.groups.len() > MAX_GROUPS {
            return fail(format!(
                "groups: {} given, at most {MAX_GROUPS}",
                req.groups.len()
            ));
        }
        for (i, g) in req.groups.iter().enumerate() {
            if let Err(e) = lull_protocol::api::check_group_name(g) {
                return fail(format!("groups: {e}"));
            }
            if req.groups[..i].contains(g) {
                return fail(format!("groups: {g} is given twice"));
            }
        }
        let cluster = req
            .cluster
            .clone()
            .unwrap_or_else(|| lull_protocol::job::DEFAULT_CLUSTER.to_owned());
        if kind == TokenKind::Submitter && req.cluster.is_some() {
            return fail("cluster belongs to an agent's join token; a person's token is limited with clusters".into());
        }
        let named = std::iter::once(("cluster", &cluster))
            .chain(req.clusters.iter().map(|c| ("clusters", c)));
        for (field, c) in named {
            if !self.cluster_exists(c).await? {
                return fail(format!(
                    "{field}: no cluster {c} (make it with `lull clusters create {c}`)"
                ));
            }
        }
        let ttl_ms = req.ttl_ms.unwrap_or(match kind {
            TokenKind::Agent => AGENT_TTL_MS,
            TokenKind::Submitter => PERSON_TTL_MS,
        });
        let expires_ms =
            (ttl_ms != 0).then(|| now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)));
        let uses = match (req.uses, kind) {
            (Some(0), _) => None,
            (Some(n), _) => Some(n),
            (None, TokenKind::Agent) => Some(1),
            (None, TokenKind::Submitter) => None,
        };
        let spec = TokenSpec {
            kind,
            expires_ms,
            uses,
            description: req.description.clone(),
            cluster,
            user: req
                .user
                .clone()
                .or_else(|| req.owner.clone())
                .unwrap_or_default(),
            role: (kind == TokenKind::Submitter).then(|| req.role.unwrap_or(Role::Submit)),
            clusters: req.clusters.clone(),
            groups: req.groups.clone(),
        };
        let token = self.create_token(&spec, now_ms).await?;
        let info = TokenInfo {
            id: token_id(&token_hash(token.as_str())),
            kind: kind.as_str().to_owned(),
            created_ms: now_ms,
            expires_ms,
            uses_left: uses.map(i64::from),
            description: spec.description,
            cluster: spec.cluster,
            user: spec.user,
            role: spec.role.map_or(String::new(), |r| r.as_str().to_owned()),
            clusters: spec.clusters,
            groups: spec.groups,
        };
        Ok(Ok((token, info)))
    }

    /// Every token, newest first (without secrets).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT hash, kind, created_ms, expires_ms, uses_left, description, cluster, user_name, \
             role, clusters, groups FROM tokens ORDER BY created_ms DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let hash: String = r.get(0);
                TokenInfo {
                    id: token_id(&hash),
                    kind: r.get(1),
                    created_ms: r.get(2),
                    expires_ms: r.get(3),
                    uses_left: r.get(4),
                    description: r.get(5),
                    cluster: r.get(6),
                    user: r.get(7),
                    role: r.get(8),
                    clusters: split_list(&r.get::<String, _>(9)),
                    groups: split_list(&r.get::<String, _>(10)),
                }
            })
            .collect())
    }

    /// Deletes the tokens whose id (as [`Store::tokens`] lists them) starts with `id_prefix`;
    /// returns how many. A prefix shorter than 6 digits deletes nothing.
    pub async fn delete_tokens(&self, id_prefix: &str) -> Result<u64> {
        if id_prefix.len() < 6 || !id_prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(0);
        }
        let pattern = format!("sha256:{}%", id_prefix.to_ascii_lowercase());
        let done = sqlx::query("DELETE FROM tokens WHERE hash LIKE $1")
            .bind(pattern)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

const FIND_TOKEN: &str = "SELECT kind, expires_ms, uses_left, cluster, user_name, role, clusters, \
                          groups FROM tokens WHERE hash = $1";

/// The most groups a person's token may name.
pub const MAX_GROUPS: usize = 32;

/// A stored list of clusters or groups: comma-separated, empty for none.
fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks `token` for `kind` at `now_ms` and counts one use of it, inside the caller's write
/// transaction (which commits the use together with whatever the token admits).
pub(super) async fn take_token(
    tx: &mut sqlx::AnyConnection,
    token: &str,
    kind: TokenKind,
    now_ms: i64,
) -> Result<std::result::Result<Grant, TokenRefusal>> {
    let hash = token_hash(token);
    let row = sqlx::query(FIND_TOKEN)
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
    let grant = match judge(row.as_ref(), kind, now_ms, true) {
        Ok(grant) => grant,
        Err(refusal) => return Ok(Err(refusal)),
    };
    sqlx::query(
        "UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = $1 AND uses_left IS NOT NULL",
    )
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    Ok(Ok(grant))
}

/// Whether a stored token (`row`: kind, expires_ms, uses_left, cluster, user_name, role,
/// clusters, groups; `None` when there is none) may be used for `kind` at `now_ms`; `uses_count`: a
/// used-up token is refused.
fn judge(
    row: Option<&sqlx::any::AnyRow>,
    kind: TokenKind,
    now_ms: i64,
    uses_count: bool,
) -> std::result::Result<Grant, TokenRefusal> {
    let row = row.ok_or(TokenRefusal::Unknown)?;
    let stored: String = row.get(0);
    if stored != kind.as_str() {
        let other = match kind {
            TokenKind::Agent => TokenKind::Submitter,
            TokenKind::Submitter => TokenKind::Agent,
        };
        return Err(TokenRefusal::WrongKind(other.as_str()));
    }
    let expires: Option<i64> = row.get(1);
    if expires.is_some_and(|at| now_ms >= at) {
        return Err(TokenRefusal::Expired);
    }
    let uses_left: Option<i64> = row.get(2);
    if uses_count && uses_left.is_some_and(|n| n <= 0) {
        return Err(TokenRefusal::UsedUp);
    }
    let role: String = row.get(5);
    let role = match kind {
        TokenKind::Agent => None,
        TokenKind::Submitter => Some(
            role.parse::<Role>()
                .map_err(|_| TokenRefusal::UnknownRole(role))?,
        ),
    };
    let clusters = split_list(&row.get::<String, _>(6));
    Ok(Grant {
        cluster: row.get(3),
        user: row.get(4),
        role,
        clusters: (!clusters.is_empty()).then_some(clusters),
        groups: split_list(&row.get::<String, _>(7)),
    })
}

/// The short id of a stored hash (`sha256:<hex>`): its first 12 hex digits.
fn token_id(hash: &str) -> String {
    hash.trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_each_backend;

    on_each_backend!(
        a_single_use_token_admits_once,
        expired_unknown_and_wrong_kind_tokens_are_refused,
        tokens_are_listed_without_secrets_and_deleted_by_id,
        a_persons_token_counts_submissions_and_keeps_its_user_role_and_clusters,
    );

    async fn a_persons_token_counts_submissions_and_keeps_its_user_role_and_clusters(store: Store) {
        let mut spec = spec(TokenKind::Submitter, None, Some(1));
        spec.user = "ci".into();
        spec.role = Some(Role::Operate);
        spec.clusters = vec!["lab".into(), "gpu".into()];
        spec.groups = vec!["physics".into(), "chem".into()];
        let token = store.create_token(&spec, 0).await.unwrap();
        let t = token.as_str();
        let expected = Grant {
            cluster: "default".into(),
            user: "ci".into(),
            role: Some(Role::Operate),
            clusters: Some(vec!["lab".into(), "gpu".into()]),
            groups: vec!["physics".into(), "chem".into()],
        };
        // One submission...
        assert_eq!(
            store
                .use_token(t, TokenKind::Submitter, true, 1)
                .await
                .unwrap(),
            Ok(expected.clone())
        );
        // ...and no second, while looking goes on.
        assert_eq!(
            store
                .use_token(t, TokenKind::Submitter, true, 2)
                .await
                .unwrap(),
            Err(TokenRefusal::UsedUp)
        );
        assert_eq!(
            store
                .use_token(t, TokenKind::Submitter, false, 3)
                .await
                .unwrap(),
            Ok(expected)
        );
        let listed = &store.tokens().await.unwrap()[0];
        assert_eq!(
            (listed.user.as_str(), listed.role.as_str(), &listed.clusters),
            ("ci", "operate", &vec!["lab".to_owned(), "gpu".to_owned()])
        );
        assert_eq!(listed.groups, vec!["physics".to_owned(), "chem".to_owned()]);
    }

    fn spec(kind: TokenKind, expires_ms: Option<i64>, uses: Option<u32>) -> TokenSpec {
        let person = kind == TokenKind::Submitter;
        TokenSpec {
            kind,
            expires_ms,
            uses,
            description: "test".into(),
            cluster: "default".into(),
            user: if person {
                "alice".into()
            } else {
                String::new()
            },
            role: person.then_some(Role::Submit),
            clusters: Vec::new(),
            groups: Vec::new(),
        }
    }

    async fn a_single_use_token_admits_once(store: Store) {
        let token = store
            .create_token(&spec(TokenKind::Agent, None, Some(1)), 0)
            .await
            .unwrap();
        assert!(token.as_str().starts_with("lull_") && token.as_str().len() == 45);
        let t = token.as_str();
        // Checking without consuming leaves it alone.
        assert!(
            store
                .use_token(t, TokenKind::Agent, false, 1)
                .await
                .unwrap()
                .is_ok()
        );
        assert!(
            store
                .use_token(t, TokenKind::Agent, true, 2)
                .await
                .unwrap()
                .is_ok()
        );
        assert_eq!(
            store.use_token(t, TokenKind::Agent, true, 3).await.unwrap(),
            Err(TokenRefusal::UsedUp)
        );
    }

    async fn expired_unknown_and_wrong_kind_tokens_are_refused(store: Store) {
        let token = store
            .create_token(&spec(TokenKind::Submitter, Some(1000), None), 0)
            .await
            .unwrap();
        let t = token.as_str();
        for _ in 0..3 {
            let grant = store
                .use_token(t, TokenKind::Submitter, true, 999)
                .await
                .unwrap()
                .expect("unlimited uses");
            assert_eq!(
                (grant.user.as_str(), grant.role, grant.clusters),
                ("alice", Some(Role::Submit), None)
            );
        }
        assert_eq!(
            store
                .use_token(t, TokenKind::Submitter, true, 1000)
                .await
                .unwrap(),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            store.use_token(t, TokenKind::Agent, true, 1).await.unwrap(),
            Err(TokenRefusal::WrongKind("submitter"))
        );
        assert_eq!(
            store
                .use_token(
                    "lull_0000000000000000000000000000000000000000",
                    TokenKind::Submitter,
                    true,
                    1
                )
                .await
                .unwrap(),
            Err(TokenRefusal::Unknown)
        );
    }

    async fn tokens_are_listed_without_secrets_and_deleted_by_id(store: Store) {
        let token = store
            .create_token(&spec(TokenKind::Agent, Some(5), Some(2)), 1)
            .await
            .unwrap();
        let listed = store.tokens().await.unwrap();
        assert_eq!(listed.len(), 1);
        let info = &listed[0];
        assert_eq!(info.id.len(), 12);
        assert!(
            !token.as_str().contains(&info.id),
            "the id is not part of the secret"
        );
        assert_eq!(
            (info.kind.as_str(), info.uses_left, info.expires_ms),
            ("agent", Some(2), Some(5))
        );
        assert_eq!(
            store.delete_tokens("abc").await.unwrap(),
            0,
            "too short a prefix"
        );
        assert_eq!(store.delete_tokens(&info.id).await.unwrap(), 1);
        assert_eq!(
            store
                .use_token(token.as_str(), TokenKind::Agent, true, 2)
                .await
                .unwrap(),
            Err(TokenRefusal::Unknown)
        );
    }
}
