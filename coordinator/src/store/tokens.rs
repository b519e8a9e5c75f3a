//! Tokens: secrets that let an agent enroll (`agent`, usually single-use and short-lived) or a
//! submitter use the HTTP API (`submitter`). Only a token's sha256 is stored; the token itself
//! is shown once, when it is made.

use std::fmt;

use lull_protocol::Digest;
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
}

/// A token as listed: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// The first 12 hex digits of the token's sha256, to tell tokens apart.
    pub id: String,
    /// What it is for.
    pub kind: String,
    /// When it was made (ms since the Unix epoch).
    pub created_ms: i64,
    /// When it stops working.
    pub expires_ms: Option<i64>,
    /// Uses left; `None`: unlimited.
    pub uses_left: Option<i64>,
    /// The note given when it was made.
    pub description: String,
    /// The cluster an agent's join token enrolls into.
    pub cluster: String,
}

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

/// How a token is stored and looked up.
fn token_hash(token: &str) -> String {
    Digest::of(token.trim().as_bytes()).to_string()
}

impl Store {
    /// Makes a token and stores its hash; the token is returned once and never again.
    pub async fn create_token(&self, spec: &TokenSpec, now_ms: i64) -> Result<Token> {
        let token = Token::generate();
        sqlx::query(
            "INSERT INTO tokens (hash, kind, created_ms, expires_ms, uses_left, description, cluster) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(token_hash(token.as_str()))
        .bind(spec.kind.as_str())
        .bind(now_ms)
        .bind(spec.expires_ms)
        .bind(spec.uses.map(i64::from))
        .bind(&spec.description)
        .bind(&spec.cluster)
        .execute(&self.pool)
        .await?;
        Ok(token)
    }

    /// Checks `token` for `kind` at `now_ms` and, when `consume`, counts one use of it (in one
    /// write transaction, so a single-use token admits exactly one of two racing holders; a
    /// check alone is a plain read, taking no write lock, as every API request makes one).
    /// The outer error is the database's; the inner one why the token was refused.
    pub async fn use_token(
        &self,
        token: &str,
        kind: TokenKind,
        consume: bool,
        now_ms: i64,
    ) -> Result<std::result::Result<(), TokenRefusal>> {
        if !consume {
            let row = sqlx::query(FIND_TOKEN)
                .bind(token_hash(token))
                .fetch_optional(&self.pool)
                .await?;
            return Ok(judge(row.as_ref(), kind, now_ms));
        }
        let mut tx = self.begin_write().await?;
        let verdict = take_token(&mut tx, token, kind, now_ms).await?;
        tx.commit().await?;
        Ok(verdict.map(|_cluster| ()))
    }

    /// Every token, newest first (without secrets).
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT hash, kind, created_ms, expires_ms, uses_left, description, cluster FROM tokens \
             ORDER BY created_ms DESC",
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

const FIND_TOKEN: &str = "SELECT kind, expires_ms, uses_left, cluster FROM tokens WHERE hash = $1";

/// Checks `token` for `kind` at `now_ms` and counts one use of it, inside the caller's write
/// transaction (which commits the use together with whatever the token admits). Returns the
/// token's cluster.
pub(super) async fn take_token(
    tx: &mut sqlx::AnyConnection,
    token: &str,
    kind: TokenKind,
    now_ms: i64,
) -> Result<std::result::Result<String, TokenRefusal>> {
    let hash = token_hash(token);
    let row = sqlx::query(FIND_TOKEN)
        .bind(&hash)
        .fetch_optional(&mut *tx)
        .await?;
    if let Err(refusal) = judge(row.as_ref(), kind, now_ms) {
        return Ok(Err(refusal));
    }
    sqlx::query(
        "UPDATE tokens SET uses_left = uses_left - 1 WHERE hash = $1 AND uses_left IS NOT NULL",
    )
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    Ok(Ok(row.map(|r| r.get(3)).unwrap_or_default()))
}

/// Whether a stored token (`row`: kind, expires_ms, uses_left; `None` when there is none) may
/// be used for `kind` at `now_ms`.
fn judge(
    row: Option<&sqlx::any::AnyRow>,
    kind: TokenKind,
    now_ms: i64,
) -> std::result::Result<(), TokenRefusal> {
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
    if uses_left.is_some_and(|n| n <= 0) {
        return Err(TokenRefusal::UsedUp);
    }
    Ok(())
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
    );

    fn spec(kind: TokenKind, expires_ms: Option<i64>, uses: Option<u32>) -> TokenSpec {
        TokenSpec {
            kind,
            expires_ms,
            uses,
            description: "test".into(),
            cluster: "default".into(),
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
        assert_eq!(
            store
                .use_token(t, TokenKind::Agent, false, 1)
                .await
                .unwrap(),
            Ok(())
        );
        assert_eq!(
            store.use_token(t, TokenKind::Agent, true, 2).await.unwrap(),
            Ok(())
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
            assert_eq!(
                store
                    .use_token(t, TokenKind::Submitter, true, 999)
                    .await
                    .unwrap(),
                Ok(()),
                "unlimited uses"
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
