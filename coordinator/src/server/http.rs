//! The people's side of the coordinator: a JSON API over HTTP, used by the `lull` command.
//!
//! Errors are JSON bodies `{"error": {"code": "...", "message": "..."}}` with a fitting status.
//!
//! Every request needs a person's token (`Authorization: Bearer lull_...`, made with
//! `lull-coordinator token create --user NAME`), except in a development cluster (`lull dev`).
//! The token's user, role and clusters decide what the request may see and do
//! ([`crate::access`]); a refusal is 403 with the reason.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::TryStreamExt;
use lull_protocol::Digest;
use lull_protocol::job::JobSpec;
use lull_protocol::message::{AttemptId, TaskId};
use serde::{Deserialize, Serialize};

use super::dashboard;
use super::history::{Minute, Sample};
use super::hub::{Hub, HubError};
use crate::access::{Denied, Principal};
use crate::blobs::BlobError;
use crate::store::{Counts, StoreError, TaskState, TokenKind};
use lull_protocol::api::{self, JobDetail, JobState, JobSummary};

/// The routes.
pub fn router(hub: Arc<Hub>) -> Router {
    let authenticated = axum::middleware::from_fn_with_state(hub.clone(), require_token);
    Router::new()
        .route("/api/v1/info", get(info))
        .route("/api/v1/me", get(me))
        .route("/metrics", get(metrics))
        .route("/api/v1/blobs/missing", post(missing))
        .route("/api/v1/blobs/{digest}", get(get_blob).put(put_blob))
        .route("/api/v1/uploads", post(start_upload))
        .route(
            "/api/v1/uploads/{digest}",
            get(upload_state).patch(append_chunk),
        )
        .route("/api/v1/jobs", get(jobs).post(submit))
        .route("/api/v1/jobs/{id}", get(job).delete(delete_job))
        .route("/api/v1/jobs/{id}/manifest", get(manifest))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .route("/api/v1/jobs/{id}/tasks/{index}", get(task))
        .route("/api/v1/jobs/{id}/tasks/{index}/live", get(live_log))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/clusters", get(clusters).post(create_cluster))
        .route("/api/v1/clusters/{id}", axum::routing::patch(set_cluster))
        .route("/api/v1/clusters/{id}/quotas", get(quotas))
        .route(
            "/api/v1/clusters/{id}/quotas/{user}",
            axum::routing::put(set_quota).delete(remove_quota),
        )
        .route("/api/v1/agents/{id}/events", get(agent_events))
        .route("/api/v1/agents/{id}/revoke", post(revoke_agent))
        .route(
            "/api/v1/agents/{id}/drain",
            post(drain_agent).delete(undrain_agent),
        )
        .route("/api/v1/pool", get(pool))
        .route("/api/v1/shares", get(shares))
        .route("/api/v1/tokens", get(tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(delete_token))
        .route("/api/v1/accounting", get(accounting))
        .route("/api/v1/stream", get(stream))
        .layer(authenticated)
        // No token for what holds no data: the dashboard's files (the page asks for a token
        // when the API wants one) and the API's description.
        .route("/", get(dashboard::index))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/{file}", get(dashboard::file))
        .route("/api/v1/openapi.json", get(openapi))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(64 << 20))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::Extension(Arc::new(PoolFeed::default())))
        .with_state(hub)
}

/// The codes of the errors found before a handler runs: a body that is not the JSON the route
/// takes, a number that is not one, a method the route does not take.
const EARLY_CODES: &[(StatusCode, &str)] = &[
    (StatusCode::BAD_REQUEST, "bad_request"),
    (StatusCode::NOT_FOUND, "not_found"),
    (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
    (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
];

/// Every error is a JSON body with a code, including those axum answers in plain text before a
/// handler runs (their text, which says what was wrong, becomes the message).
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let what = format!("{} {}", request.method(), request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let code = EARLY_CODES.iter().find(|(s, _)| *s == status).map_or(
        if status.is_server_error() {
            "internal"
        } else {
            "bad_request"
        },
        |(_, c)| *c,
    );
    let body = axum::body::to_bytes(response.into_body(), 64 << 10)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        format!("{what}: the route does not take this method (the routes: /api/v1/openapi.json)")
    } else if text.is_empty() {
        format!("{what}: {}", status.canonical_reason().unwrap_or("failed"))
    } else {
        format!("{what}: {text}")
    };
    ApiError::new(status, code, message).into_response()
}

/// A path no route has.
async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {}: the API is under /api/v1 (the routes: /api/v1/openapi.json)",
            uri.path()
        ),
    )
}

/// The one a request comes from: who, and the token they came with (a job they submit takes
/// one of its uses).
#[derive(Debug, Clone)]
struct Caller {
    principal: Principal,
    token: Option<String>,
}

/// Lets a request through only with a valid person's token, outside development clusters, and
/// hands the routes its [`Caller`].
async fn require_token(
    State(hub): State<Arc<Hub>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if hub.config().dev {
        request.extensions_mut().insert(Caller {
            principal: Principal::dev(),
            token: None,
        });
        return next.run(request).await;
    }
    const HOW: &str = "make one on the coordinator with `lull-coordinator token create \
                       --user NAME` and pass it with `lull --token TOKEN` or LULL_TOKEN";
    let header = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("this coordinator needs a person's token: {HOW}"),
        )
        .into_response();
    };
    let token = token.trim().to_owned();
    match hub
        .store()
        .use_token(&token, TokenKind::Submitter, false, hub.store().now_ms())
        .await
    {
        Ok(Ok(grant)) => {
            let Some(role) = grant.role else {
                return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", HOW)
                    .into_response();
            };
            request.extensions_mut().insert(Caller {
                principal: Principal {
                    user: grant.user,
                    role,
                    clusters: grant.clusters,
                    groups: grant.groups,
                },
                token: Some(token),
            });
            next.run(request).await
        }
        Ok(Err(refusal)) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("the token was refused: {refusal}; {HOW}"),
        )
        .into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", denied.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = api::ErrorBody {
            error: api::ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::BadRequest(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", m),
            HubError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            HubError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            HubError::Forbidden(m) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", m),
            HubError::Io(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
            HubError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoJob(id) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no job {id}"))
            }
            e => {
                tracing::error!(error = %e, "store error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse().map_err(|e: lull_protocol::digest::DigestError| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_digest", e.to_string())
    })
}

async fn info(State(hub): State<Arc<Hub>>) -> Json<api::Info> {
    Json(api::Info {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        protocol_version: lull_protocol::PROTOCOL_VERSION,
        dev: hub.config().dev,
        requires_signatures: hub.config().trust.is_some(),
    })
}

/// Whom the token belongs to and what it may do.
async fn me(axum::Extension(caller): axum::Extension<Caller>) -> Json<api::Me> {
    let p = caller.principal;
    Json(api::Me {
        user: p.user,
        role: p.role,
        clusters: p.clusters,
        groups: p.groups,
    })
}

async fn missing(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(req): Json<api::MissingRequest>,
) -> ApiResult<Json<api::Missing>> {
    caller.principal.may_submit(None)?;
    let mut missing = Vec::new();
    for d in req.digests {
        if hub.blobs().contains(&d) {
            // The submitter will refer to it: it is safe from collection for the grace period.
            hub.blobs().touch(&d);
        } else {
            missing.push(d);
        }
    }
    Ok(Json(api::Missing { missing }))
}

/// The largest chunk of a resumable upload.
pub const MAX_CHUNK: u64 = 16 << 20;
/// The header naming where a chunk starts in its blob.
pub const OFFSET_HEADER: &str = "upload-offset";
/// The header carrying a chunk's own sha256.
pub const CHUNK_DIGEST_HEADER: &str = "chunk-digest";

fn upload_answer(state: crate::blobs::UploadState) -> Json<api::UploadState> {
    Json(api::UploadState {
        digest: state.digest,
        size: state.size,
        offset: state.offset,
        complete: state.complete,
        max_chunk: MAX_CHUNK,
    })
}

fn blob_error(digest: &Digest, e: BlobError) -> ApiError {
    let (status, code) = match &e {
        BlobError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            (StatusCode::INSUFFICIENT_STORAGE, "disk_full")
        }
        BlobError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        BlobError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        BlobError::Offset { .. } => (StatusCode::CONFLICT, "offset_mismatch"),
        BlobError::Busy => (StatusCode::CONFLICT, "upload_busy"),
        BlobError::NoUpload => (StatusCode::NOT_FOUND, "no_upload"),
        BlobError::Chunk { .. } => (StatusCode::BAD_REQUEST, "chunk_rejected"),
        BlobError::Mismatch { .. } | BlobError::Length { .. } => {
            (StatusCode::BAD_REQUEST, "blob_rejected")
        }
    };
    ApiError::new(status, code, format!("blob {digest}: {e}"))
}

/// Starts (or finds) the resumable upload of a blob: answers where to continue from.
async fn start_upload(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(req): Json<api::StartUpload>,
) -> ApiResult<Json<api::UploadState>> {
    caller.principal.may_submit(None)?;
    let state = hub
        .blobs()
        .start_upload(req.digest, req.size, hub.config().max_blob)
        .await
        .map_err(|e| blob_error(&req.digest, e))?;
    Ok(upload_answer(state))
}

async fn upload_state(
    State(hub): State<Arc<Hub>>,
    Path(digest): Path<String>,
) -> ApiResult<Json<api::UploadState>> {
    let digest = parse_digest(&digest)?;
    match hub.blobs().upload_state(&digest).await {
        Ok(Some(state)) => Ok(upload_answer(state)),
        Ok(None) => Err(blob_error(&digest, BlobError::NoUpload)),
        Err(e) => Err(blob_error(&digest, e)),
    }
}

/// Adds one chunk to an upload: `Upload-Offset` says where it starts, `Chunk-Digest` what its
/// bytes hash to.
async fn append_chunk(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(digest): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<api::UploadState>> {
    caller.principal.may_submit(None)?;
    let digest = parse_digest(&digest)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("a chunk needs the {name} header"),
                )
            })
    };
    let offset: u64 = header(OFFSET_HEADER)?.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{OFFSET_HEADER}: not a number of bytes"),
        )
    })?;
    let chunk_digest: Digest = header(CHUNK_DIGEST_HEADER)?.parse().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{CHUNK_DIGEST_HEADER}: {e}"),
        )
    })?;
    if body.len() as u64 > MAX_CHUNK {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a chunk may hold at most {MAX_CHUNK} bytes"),
        ));
    }
    let state = hub
        .blobs()
        .append_chunk(digest, offset, chunk_digest, &body)
        .await
        .map_err(|e| blob_error(&digest, e))?;
    Ok(upload_answer(state))
}

async fn put_blob(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(digest): Path<String>,
    body: Body,
) -> ApiResult<Json<api::BlobStored>> {
    caller.principal.may_submit(None)?;
    let digest = parse_digest(&digest)?;
    let stream = body
        .into_data_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    let reader = tokio_util::io::StreamReader::new(stream);
    match hub
        .blobs()
        .put(digest, None, hub.config().max_blob, reader)
        .await
    {
        Ok(size) => Ok(Json(api::BlobStored { digest, size })),
        Err(e) => Err(blob_error(&digest, e)),
    }
}

async fn get_blob(State(hub): State<Arc<Hub>>, Path(digest): Path<String>) -> ApiResult<Response> {
    let digest = parse_digest(&digest)?;
    let file = tokio::fs::File::open(hub.blobs().path(&digest))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no blob {digest}"),
            )
        })?;
    let stream = tokio_util::io::ReaderStream::new(file);
    Ok(Body::from_stream(stream).into_response())
}

async fn submit(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(mut spec): Json<JobSpec>,
) -> ApiResult<(StatusCode, Json<api::Submitted>)> {
    caller.principal.may_submit(Some(&spec.cluster))?;
    if let Some(g) = spec.group.as_deref() {
        lull_protocol::api::check_group_name(g)
            .map_err(|e| HubError::BadRequest(format!("group: {e}")))?;
    }
    spec.group = caller.principal.job_group(spec.group.as_deref())?;
    // A job that comes after others reads their outputs: its submitter must see them.
    for parent in &spec.after {
        let (owner, cluster) = hub.store().job_owner(*parent).await.map_err(|e| match e {
            crate::store::StoreError::NoJob(_) => {
                HubError::BadRequest(format!("after: there is no job {parent}"))
            }
            e => e.into(),
        })?;
        caller.principal.may_see_job(*parent, &owner, &cluster)?;
    }
    let job = hub
        .submit(spec, &caller.principal.user, caller.token.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(api::Submitted { job })))
}

/// A job of the list, from its row.
fn job_summary(j: crate::store::JobHeader) -> JobSummary {
    let c = j.counts;
    JobSummary {
        id: j.id,
        name: j.name,
        state: JobState::of_held(&c, j.cancelled, j.held),
        // Every task is stored when the job is.
        count: u32::try_from(c.total()).unwrap_or(u32::MAX),
        counts: c,
        created_ms: j.created_ms,
        owner: j.owner,
    }
}

async fn jobs(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<JobSummary>>> {
    let jobs = hub
        .store()
        .newest_jobs(None, &caller.principal.job_filter())
        .await?;
    Ok(Json(jobs.into_iter().map(job_summary).collect()))
}

/// An agent on the dashboard: as `/api/v1/agents` lists it, with its recent reports.
#[derive(Serialize)]
struct PoolAgent {
    #[serde(flatten)]
    agent: api::Agent,
    history: Vec<Sample>,
}

/// A job on the dashboard: its summary and how far it got.
#[derive(Serialize)]
struct PoolJob {
    #[serde(flatten)]
    summary: JobSummary,
    /// The fraction of its tasks' work done: ended tasks count whole, running ones by the
    /// progress their guests report.
    progress: f64,
}

#[derive(Serialize)]
struct Harvest {
    /// Core-seconds guests used since this coordinator started.
    core_seconds: f64,
    /// The same per minute, oldest first.
    minutes: Vec<Minute>,
}

/// How many jobs the pool lists: the newest.
const POOL_JOBS: u32 = 100;

/// What the dashboard shows: `/api/v1/pool`, and each event of `/api/v1/stream`.
#[derive(Serialize)]
struct Pool {
    now_ms: i64,
    agents: Vec<PoolAgent>,
    /// The newest jobs, at most [`POOL_JOBS`], newest first.
    jobs: Vec<PoolJob>,
    /// Tasks by state over all jobs.
    tasks: Counts,
    harvest: Harvest,
    /// Each user's standing in the fair share of the clusters the token reaches.
    shares: Vec<api::Share>,
}

/// The pool as `who` may see it, with the history recorded after `since_ms` and up to
/// `now_ms`: the agents of the clusters the token reaches, and the jobs it may see.
async fn pool_document(hub: &Hub, who: &Principal, since_ms: i64, now_ms: i64) -> ApiResult<Pool> {
    let mut samples = hub.agent_samples(since_ms, now_ms);
    let agents = hub
        .agents()
        .into_iter()
        .filter(|agent| who.reaches(&agent.cluster))
        .map(|agent| PoolAgent {
            history: samples.remove(&agent.id).unwrap_or_default(),
            agent,
        })
        .collect();
    let running = hub.running_progress();
    let tasks = hub.store().total_counts().await?;
    let jobs = hub
        .store()
        .newest_jobs(Some(POOL_JOBS), &who.job_filter())
        .await?
        .into_iter()
        .map(|j| {
            let summary = job_summary(j);
            let c = &summary.counts;
            let ended = (c.succeeded + c.failed + c.cancelled) as f64;
            let live = running
                .get(&summary.id)
                .copied()
                .unwrap_or(0.0)
                .min(c.running as f64);
            let progress = ((ended + live) / f64::from(summary.count.max(1))).clamp(0.0, 1.0);
            PoolJob { summary, progress }
        })
        .collect();
    let (core_seconds, minutes) = hub.harvest(since_ms);
    let mut shares = hub.shares();
    shares.retain(|s| who.reaches(&s.cluster));
    Ok(Pool {
        now_ms,
        agents,
        jobs,
        tasks,
        harvest: Harvest {
            core_seconds,
            minutes,
        },
        shares,
    })
}

async fn pool(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Pool>> {
    Ok(Json(
        pool_document(&hub, &caller.principal, i64::MIN, history_end()).await?,
    ))
}

/// Where history read now ends: a millisecond ago, so that no report recorded later can carry
/// an earlier time (reports are stamped when recorded).
fn history_end() -> i64 {
    crate::clock::now_ms() - 1
}

/// One second of the pool, made once for every stream client.
#[derive(Debug)]
struct Tick {
    /// The history it carries starts after this...
    since: i64,
    /// ...and ends here.
    now: i64,
    /// The pool document, or why it could not be made.
    json: Result<String, String>,
}

/// The pool once a second for `/api/v1/stream`: one producer, made when the first client comes
/// and gone a second after the last leaves, whatever the number of clients.
#[derive(Debug)]
struct PoolFeed {
    ticks: tokio::sync::watch::Sender<Option<Arc<Tick>>>,
    running: std::sync::atomic::AtomicBool,
}

impl Default for PoolFeed {
    fn default() -> Self {
        Self {
            ticks: tokio::sync::watch::channel(None).0,
            running: Default::default(),
        }
    }
}

impl PoolFeed {
    /// A new client's view of the ticks; starts the producer when none runs.
    fn subscribe(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
    ) -> tokio::sync::watch::Receiver<Option<Arc<Tick>>> {
        let rx = self.ticks.subscribe();
        self.ensure_running(hub);
        rx
    }

    fn ensure_running(self: &Arc<Self>, hub: &Arc<Hub>) {
        use std::sync::atomic::Ordering;
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (hub, feed) = (hub.clone(), self.clone());
        tokio::spawn(async move {
            let mut since = history_end();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                if feed.ticks.receiver_count() == 0 {
                    feed.running.store(false, Ordering::Release);
                    // A client may have come between the count and the store: it saw the
                    // producer running, so it must go on.
                    if feed.ticks.receiver_count() == 0 || feed.running.swap(true, Ordering::AcqRel)
                    {
                        return;
                    }
                }
                let now = history_end();
                let json = match pool_document(&hub, &Principal::everything(), since, now).await {
                    Ok(pool) => serde_json::to_string(&pool).map_err(|e| e.to_string()),
                    Err(e) => Err(e.message),
                };
                let ok = json.is_ok();
                feed.ticks
                    .send_replace(Some(Arc::new(Tick { since, now, json })));
                // After a failure the next tick carries the history it missed.
                if ok {
                    since = now;
                }
            }
        });
    }
}

/// `?since_ms=`: where the client's copy of the history ends.
#[derive(Deserialize)]
struct StreamQuery {
    since_ms: Option<i64>,
}

/// The pool once a second as server-sent events named `pool`, each with the history recorded
/// since the one before (the first: since `since_ms`, or now). Every client that sees
/// everything is sent the same shared tick; one whose history does not end where the tick's
/// starts (the first event, or a client that fell behind), or who sees only part of the pool
/// (their own jobs, some clusters), gets its own document instead.
async fn stream(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    axum::Extension(feed): axum::Extension<Arc<PoolFeed>>,
    axum::extract::Query(query): axum::extract::Query<StreamQuery>,
) -> axum::response::sse::Sse<
    impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>,
> {
    use axum::response::sse::{Event, Sse};
    let since = query.since_ms.unwrap_or_else(history_end);
    let rx = feed.subscribe(&hub);
    let who = Arc::new(caller.principal);
    let state = (hub, who, rx, since);
    let events = futures::stream::unfold(state, |(hub, who, mut rx, since)| async move {
        rx.changed().await.ok()?;
        let tick = rx.borrow_and_update().clone()?;
        let (event, next) = match &tick.json {
            Ok(json) if tick.since == since && who.sees_everything() => {
                (Event::default().event("pool").data(json), tick.now)
            }
            Ok(_) => match pool_document(&hub, &who, since, tick.now).await {
                Ok(pool) => (
                    Event::default()
                        .event("pool")
                        .json_data(&pool)
                        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string())),
                    tick.now,
                ),
                Err(e) => (Event::default().event("error").data(e.message), since),
            },
            // The client keeps its view and hears again in a second.
            Err(message) => (Event::default().event("error").data(message), since),
        };
        Some((Ok(event), (hub, who, rx, next)))
    });
    Sse::new(events)
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        super::openapi::DOCUMENT,
    )
        .into_response()
}

/// Whether the caller may see job `id` of `owner` in `cluster`, or (with `change`:
/// "cancelling", "deleting") change it.
fn judge_job(
    caller: &Caller,
    id: u64,
    owner: &str,
    cluster: &str,
    change: Option<&str>,
) -> ApiResult<()> {
    let who = &caller.principal;
    match change {
        None => who.may_see_job(id, owner, cluster)?,
        Some(doing) => who.may_change_job(doing, id, owner, cluster)?,
    }
    Ok(())
}

/// Checks access to job `id` by its owner and cluster alone (two columns, not its
/// definition). A job that does not exist is 404 whoever asks.
async fn check_job(hub: &Hub, caller: &Caller, id: u64, change: Option<&str>) -> ApiResult<()> {
    let (owner, cluster) = hub.store().job_owner(id).await?;
    judge_job(caller, id, &owner, &cluster, change)
}

/// Job `id` with its definition, when the caller may see it.
async fn job_for(hub: &Hub, caller: &Caller, id: u64) -> ApiResult<crate::store::JobRow> {
    let job = hub.store().job(id).await?;
    judge_job(caller, id, &job.spec.owner, &job.spec.cluster, None)?;
    Ok(job)
}

/// `GET /api/v1/jobs/{id}`: the job, its counts and a page of its tasks (`?offset=N&limit=M
/// &state=S`, see [`api::TaskQuery`]), read from the store page by page, never the whole job.
async fn job(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
    axum::extract::Query(query): axum::extract::Query<Vec<(String, String)>>,
) -> ApiResult<Json<JobDetail>> {
    let query = api::TaskQuery::parse(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let job = job_for(&hub, &caller, id).await?;
    let counts = hub.store().job_counts(id).await?;
    let page = hub
        .store()
        .task_page(id, query.offset, query.limit, query.state)
        .await?;
    let tasks = page
        .tasks
        .into_iter()
        .map(|p| {
            let t = p.task;
            let attempt = AttemptId {
                task: t.id,
                attempt: t.attempt,
            };
            let waiting = if t.state == TaskState::Running {
                hub.attempt_waiting(attempt)
            } else {
                None
            };
            // How far the guest got: as it reports now, and never less than its latest
            // checkpoint holds (that much is kept whatever happens to the attempt).
            let kept = p.checkpoint_progress;
            let progress = match t.state {
                TaskState::Succeeded => Some(1.0),
                TaskState::Running => match (hub.attempt_progress(attempt), kept) {
                    (Some(live), Some(kept)) => Some(live.max(kept)),
                    (live, kept) => live.or(kept),
                },
                _ => kept,
            };
            api::TaskView {
                result: p.result,
                task: t,
                waiting,
                progress,
            }
        })
        .collect();
    let waiting_reason = (counts.pending > 0 && !job.cancelled).then(|| match &job.hold {
        _ if !job.held => hub.waiting_reason(&job.spec),
        Some(why) => format!("held: {why}"),
        None => format!(
            "held until job(s) {} succeed",
            job.spec
                .after
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    });
    Ok(Json(JobDetail {
        job: JobSummary {
            id: job.id,
            name: job.spec.name.clone(),
            state: JobState::of_held(&counts, job.cancelled, job.held),
            count: job.spec.count,
            counts,
            created_ms: job.created_ms,
            owner: job.spec.owner.clone(),
        },
        waiting_reason,
        hold: job.hold.filter(|_| job.held && !job.cancelled),
        spec: job.spec,
        tasks,
        next_offset: page.next,
    }))
}

/// Prometheus' text format.
async fn metrics(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Response> {
    caller.principal.may_read_everything("reading /metrics")?;
    let text = hub.metrics().await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn delete_job(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<api::Deleted>> {
    check_job(&hub, &caller, id, Some("deleting")).await?;
    hub.delete_job(id).await?;
    Ok(Json(api::Deleted {
        job: id,
        deleted: true,
    }))
}

async fn manifest(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<lull_protocol::job::Manifest>> {
    Ok(Json(job_for(&hub, &caller, id).await?.spec.manifest()))
}

async fn task(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((id, index)): Path<(u64, u32)>,
) -> ApiResult<Json<api::TaskDetail>> {
    check_job(&hub, &caller, id, None).await?;
    let found = find_task(&hub, id, index).await?;
    let task = TaskId { job: id, index };
    let attempts = hub.store().attempts(task).await?;
    let checkpoint = hub.store().checkpoint(task).await?;
    let checkpoint = checkpoint.map(|c| api::Checkpoint {
        digest: c.digest,
        size: c.size,
        attempt: c.attempt,
        progress: found.checkpoint_progress,
    });
    Ok(Json(api::TaskDetail {
        task: found.task,
        attempts,
        checkpoint,
    }))
}

/// Task `index` of job `id`, as a page of one task that starts at it; 404 when there is none.
async fn find_task(hub: &Hub, id: u64, index: u32) -> ApiResult<crate::store::PagedTask> {
    hub.store()
        .task_page(id, index, 1, None)
        .await?
        .tasks
        .pop()
        .filter(|p| p.task.id.index == index)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no task {id}.{index}"),
            )
        })
}

/// The query of `GET /api/v1/jobs/{id}/tasks/{index}/live`.
#[derive(Debug, serde::Deserialize)]
struct LiveQuery {
    module: String,
    #[serde(default = "stdout")]
    stream: String,
    #[serde(default)]
    offset: u64,
}

fn stdout() -> String {
    "stdout".into()
}

/// What a running module of a task has written so far, asked of its agent.
async fn live_log(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((id, index)): Path<(u64, u32)>,
    axum::extract::Query(q): axum::extract::Query<LiveQuery>,
) -> ApiResult<Json<api::LiveLog>> {
    check_job(&hub, &caller, id, None).await?;
    let stream: lull_protocol::message::Stream = q
        .stream
        .parse()
        .map_err(|e: String| HubError::BadRequest(format!("stream: {e}")))?;
    lull_protocol::job::check_module_name(&q.module)
        .map_err(|e| HubError::BadRequest(format!("module: {e}")))?;
    let task = find_task(&hub, id, index).await?.task;
    let output = if task.state == TaskState::Running {
        let attempt = AttemptId {
            task: task.id,
            attempt: task.attempt,
        };
        hub.tail(attempt, &q.module, stream, q.offset).await?
    } else {
        None
    };
    Ok(Json(api::LiveLog {
        attempt: task.attempt,
        running: output.is_some(),
        output,
    }))
}

async fn cancel(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<u64>,
) -> ApiResult<Json<api::Cancelled>> {
    check_job(&hub, &caller, id, Some("cancelling")).await?;
    let stopping = hub.cancel(id).await?;
    Ok(Json(api::Cancelled { job: id, stopping }))
}

async fn agents(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Json<Vec<api::Agent>> {
    let mut agents = hub.agents();
    agents.retain(|a| caller.principal.reaches(&a.cluster));
    Json(agents)
}

/// Checks that the caller's token reaches agent `id`'s cluster and, with `doing` ("draining
/// agent X"), may act on it.
async fn agent_access(hub: &Hub, caller: &Caller, id: &str, doing: Option<&str>) -> ApiResult<()> {
    let cluster = hub.store().agent_cluster(id).await?;
    let who = &caller.principal;
    match doing {
        Some(doing) => who.may_operate(doing, &cluster)?,
        None => who.may_reach(&format!("agent {id}"), &cluster)?,
    }
    Ok(())
}

async fn agent_events(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<api::AgentEvents>> {
    agent_access(&hub, &caller, &id, None).await?;
    let events = hub.store().agent_events(&id, 200).await?;
    Ok(Json(api::AgentEvents { agent: id, events }))
}

async fn revoke_agent(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Revoked>> {
    agent_access(&hub, &caller, &id, Some(&format!("revoking agent {id}"))).await?;
    let requeued = hub.revoke(&id).await?;
    Ok(Json(api::Revoked {
        agent: id,
        revoked: true,
        requeued,
    }))
}

async fn drain_agent(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Json(req): Json<api::DrainRequest>,
) -> ApiResult<Json<api::Drain>> {
    agent_access(&hub, &caller, &id, Some(&format!("draining agent {id}"))).await?;
    let deadline = std::time::Duration::from_millis(req.deadline_ms.unwrap_or(3_600_000));
    let running = hub.drain(&id, deadline).await?;
    Ok(Json(api::Drain {
        agent: id,
        draining: true,
        running: Some(running),
        deadline_ms: Some(deadline.as_millis() as u64),
    }))
}

async fn undrain_agent(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<api::Drain>> {
    agent_access(
        &hub,
        &caller,
        &id,
        Some(&format!("ending the drain of agent {id}")),
    )
    .await?;
    hub.undrain(&id).await?;
    Ok(Json(api::Drain {
        agent: id,
        draining: false,
        running: None,
        deadline_ms: None,
    }))
}

/// Every token, without secrets: for operators of every cluster.
async fn tokens(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<api::TokenInfo>>> {
    caller.principal.may_administer("listing tokens")?;
    Ok(Json(hub.store().tokens().await?))
}

/// Makes a token: the answer holds it, this once.
async fn create_token(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(req): Json<api::NewToken>,
) -> ApiResult<(StatusCode, Json<api::TokenCreated>)> {
    caller.principal.may_administer("making tokens")?;
    let (token, info) = hub
        .store()
        .issue_token(&req, hub.store().now_ms())
        .await?
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.0))?;
    tracing::info!(by = %caller.principal.user, id = %info.id, kind = %info.kind, user = %info.user, "token made");
    Ok((
        StatusCode::CREATED,
        Json(api::TokenCreated {
            token: token.as_str().to_owned(),
            info,
        }),
    ))
}

/// Deletes the tokens whose id starts with `id` (at least 6 hex digits).
async fn delete_token(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<api::TokensDeleted>> {
    caller.principal.may_administer("deleting tokens")?;
    let deleted = hub.store().delete_tokens(&id).await?;
    if deleted == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no token has an id starting with {id:?} (give at least 6 hex digits of an id from the list)"
            ),
        ));
    }
    tracing::info!(by = %caller.principal.user, %id, deleted, "tokens deleted");
    Ok(Json(api::TokensDeleted { deleted }))
}

/// Core-seconds harvested per user and per lender.
async fn accounting(State(hub): State<Arc<Hub>>) -> ApiResult<Json<api::Accounting>> {
    Ok(Json(hub.accounting().await?))
}

/// Every user's standing in the fair share of the clusters the token reaches.
async fn shares(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Json<Vec<api::Share>> {
    let mut shares = hub.shares();
    shares.retain(|s| caller.principal.reaches(&s.cluster));
    Json(shares)
}

async fn clusters(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> ApiResult<Json<Vec<api::Cluster>>> {
    let mut clusters = hub.clusters().await?;
    clusters.retain(|c| caller.principal.reaches(&c.id));
    Ok(Json(clusters))
}

async fn set_cluster(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    Json(settings): Json<api::ClusterSettings>,
) -> ApiResult<Json<api::Cluster>> {
    caller
        .principal
        .may_operate(&format!("changing cluster {id}"), &id)?;
    hub.set_cluster(&id, &settings).await?;
    hub.clusters()
        .await?
        .into_iter()
        .find(|c| c.id == id)
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no cluster {id}"),
            )
        })
}

async fn quotas(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<api::Quota>>> {
    caller.principal.may_reach(&format!("cluster {id}"), &id)?;
    Ok(Json(hub.quotas(&id).await?))
}

async fn set_quota(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((id, user)): Path<(String, String)>,
    Json(limits): Json<api::SetQuota>,
) -> ApiResult<Json<Vec<api::Quota>>> {
    caller
        .principal
        .may_operate(&format!("setting quotas in cluster {id}"), &id)?;
    hub.set_quota(&id, &user, &limits).await?;
    Ok(Json(hub.quotas(&id).await?))
}

async fn remove_quota(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((id, user)): Path<(String, String)>,
) -> ApiResult<Json<Vec<api::Quota>>> {
    caller
        .principal
        .may_operate(&format!("removing quotas in cluster {id}"), &id)?;
    let none = api::SetQuota {
        max_tasks: None,
        max_cores: None,
    };
    hub.set_quota(&id, &user, &none).await?;
    Ok(Json(hub.quotas(&id).await?))
}

async fn create_cluster(
    State(hub): State<Arc<Hub>>,
    axum::Extension(caller): axum::Extension<Caller>,
    Json(req): Json<api::NewCluster>,
) -> ApiResult<Json<api::ClusterCreated>> {
    caller
        .principal
        .may_administer(&format!("making cluster {}", req.id))?;
    hub.create_cluster(&req.id, &req.description).await?;
    Ok(Json(api::ClusterCreated {
        id: req.id,
        created: true,
    }))
}
