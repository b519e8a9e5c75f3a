//! The web dashboard: one page and its script and style, built into the coordinator (nothing to
//! install or build). The page reads `/api/v1/pool` once, then follows the server-sent events
//! of `/api/v1/stream`; details come from the rest of the API.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The page.
pub async fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX)
}

/// The page's files, by name.
pub async fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => serve("text/javascript; charset=utf-8", SCRIPT),
        "style.css" => serve("text/css; charset=utf-8", STYLE),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": {
                "code": "not_found",
                "message": format!("the dashboard has no file {name:?} (it has app.js and style.css)"),
            }})),
        )
            .into_response(),
    }
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // A new coordinator's page replaces an old one's at once.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
