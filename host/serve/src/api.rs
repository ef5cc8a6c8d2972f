//! The control API: JSON over HTTP, every call with a bearer token.
//!
//! | method | path | does |
//! |---|---|---|
//! | GET | `/api/pipelines` | the caller's pipelines (every tenant's for the admin) |
//! | GET | `/api/tenants/{tenant}/pipelines/{name}` | one pipeline's status |
//! | PUT | `/api/tenants/{tenant}/pipelines/{name}` | create or replace it (body: its config in JSON) |
//! | DELETE | `/api/tenants/{tenant}/pipelines/{name}` | stop it with a final checkpoint and forget it |
//! | POST | `/api/tenants/{tenant}/pipelines/{name}/pause`, `/resume` | pause or resume it |
//! | POST | `/api/tenants/{tenant}/pipelines/{name}/snapshot` | an incremental snapshot request, as a signal row's JSON: `{"type": "execute-snapshot", "data-collections": ["public.orders"]}` (also `stop-snapshot`, `pause-snapshot`, `resume-snapshot`) |
//! | POST | `/api/tenants/{tenant}/plugins` | upload a plugin component (the body); answers its `digest`, which pipeline configs name as `path = "sha256:…"` |
//! | GET | `/api/schema` | the JSON Schema of a pipeline config |
//! | GET | `/metrics` | the caller's pipelines' metrics, labelled by tenant and pipeline (OpenMetrics) |
//! | GET | `/` | the status page (it asks for a token, or takes one from `#token=…`) |
//! | GET | `/health` | 200 when every pipeline streams, 503 (with the ones that do not) otherwise |
//!
//! No token or an unknown one: 401. A tenant's token reaches only that tenant's pipelines: for
//! another tenant's, it gets the same 404 as for a pipeline that does not exist, so it learns
//! nothing about other tenants. Configs are write-only: no response carries one (they hold
//! passwords), only the status.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::config::TokenDigest;
use crate::pipelines::{Applied, Format, Origin, PipelineId, Pipelines, Refusal, not_found};
use crate::supervisor::State as PipelineState;
use walflow_core::snapshot::request::Request;

/// The API's routes over `pipelines`.
pub fn router(pipelines: Arc<Pipelines>) -> axum::Router {
    axum::Router::new()
        .route("/api/pipelines", get(list))
        .route(
            "/api/tenants/{tenant}/pipelines/{name}",
            get(status).put(put).delete(delete),
        )
        .route("/api/tenants/{tenant}/pipelines/{name}/pause", post(pause))
        .route(
            "/api/tenants/{tenant}/pipelines/{name}/resume",
            post(resume),
        )
        .route(
            "/api/tenants/{tenant}/pipelines/{name}/snapshot",
            post(snapshot),
        )
        .route(
            "/api/tenants/{tenant}/plugins",
            post(upload).layer(axum::extract::DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route("/api/schema", get(schema))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/", get(page))
        .with_state(pipelines)
}

/// Largest plugin upload (a Python component with its interpreter is ~40 MiB).
const MAX_PLUGIN_BYTES: usize = 256 << 20;

/// Who is calling.
enum Caller {
    Admin,
    Tenant(String),
}

impl Caller {
    /// Whether the caller may see and change `tenant`'s pipelines.
    fn reaches(&self, tenant: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Tenant(t) => t == tenant,
        }
    }
}

/// An API answer that is not a success: a status and one sentence.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().expect("static header"),
            );
        }
        response
    }
}

impl From<Refusal> for Failure {
    fn from(r: Refusal) -> Failure {
        let code = match &r {
            Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
            Refusal::Conflict(_) => StatusCode::CONFLICT,
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
        };
        Failure(code, r.to_string())
    }
}

/// The caller the `Authorization: Bearer` header names.
fn caller(pipelines: &Pipelines, headers: &HeaderMap) -> Result<Caller, Failure> {
    let unauthorized = |why: &str| Failure(StatusCode::UNAUTHORIZED, why.to_string());
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        unauthorized("this API needs a token: send Authorization: Bearer <token>")
    })?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("send the token as Authorization: Bearer <token>"))?;
    let digest = TokenDigest::of(token.trim());
    let config = pipelines.config();
    if config.admin.as_ref().is_some_and(|a| a.matches(&digest)) {
        return Ok(Caller::Admin);
    }
    config
        .tenants
        .iter()
        .find(|t| t.token.matches(&digest))
        .map(|t| Caller::Tenant(t.name.clone()))
        .ok_or_else(|| unauthorized("the token is not valid"))
}

/// The pipeline a path names, when the caller may reach it; else the not-found answer.
fn reachable(
    pipelines: &Pipelines,
    headers: &HeaderMap,
    (tenant, name): (String, String),
) -> Result<PipelineId, Failure> {
    let caller = caller(pipelines, headers)?;
    let id = PipelineId { tenant, name };
    if !caller.reaches(&id.tenant) {
        return Err(not_found(&id).into());
    }
    Ok(id)
}

async fn list(State(p): State<Arc<Pipelines>>, headers: HeaderMap) -> Result<Response, Failure> {
    let listed = match caller(&p, &headers)? {
        Caller::Admin => p.list(None),
        Caller::Tenant(t) => p.list(Some(&t)),
    };
    Ok(Json(json!({ "pipelines": listed })).into_response())
}

async fn status(
    State(p): State<Arc<Pipelines>>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> Result<Response, Failure> {
    let id = reachable(&p, &headers, path)?;
    Ok(Json(p.get(&id)?).into_response())
}

async fn put(
    State(p): State<Arc<Pipelines>>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    body: String,
) -> Result<Response, Failure> {
    let id = reachable(&p, &headers, path)?;
    let applied = p.put(&id, Origin::Api, body, Format::Json).await?;
    let code = match applied {
        Applied::Created => StatusCode::CREATED,
        Applied::Replaced | Applied::Unchanged => StatusCode::OK,
    };
    Ok((code, Json(p.get(&id)?)).into_response())
}

async fn delete(
    State(p): State<Arc<Pipelines>>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> Result<Response, Failure> {
    let id = reachable(&p, &headers, path)?;
    p.remove(&id, Origin::Api).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn pause(
    State(p): State<Arc<Pipelines>>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> Result<Response, Failure> {
    set_paused(&p, &headers, path, true).await
}

async fn resume(
    State(p): State<Arc<Pipelines>>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> Result<Response, Failure> {
    set_paused(&p, &headers, path, false).await
}

/// Pauses or resumes the pipeline a path names; answers its status.
async fn set_paused(
    p: &Pipelines,
    headers: &HeaderMap,
    path: (String, String),
    paused: bool,
) -> Result<Response, Failure> {
    let id = reachable(p, headers, path)?;
    p.set_paused(&id, paused).await?;
    Ok(Json(p.get(&id)?).into_response())
}

async fn snapshot(
    State(p): State<Arc<Pipelines>>,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    body: String,
) -> Result<Response, Failure> {
    let id = reachable(&p, &headers, path)?;
    let config = p.config_of(&id)?;
    let request: Request = serde_json::from_str(&body).map_err(|e| {
        Failure(
            StatusCode::BAD_REQUEST,
            format!("not a snapshot request ({e}); send e.g. {{\"type\": \"execute-snapshot\", \"data-collections\": [\"public.orders\"]}}"),
        )
    })?;
    match walflow_core::snapshot::command::send(&config, request).await {
        Ok(message) => Ok(Json(json!({ "message": message })).into_response()),
        Err(e) => {
            let code = match walflow_core::error::class_of(&e) {
                Some(walflow_core::error::Class::Transient) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            Err(Failure(code, format!("{e:#}")))
        }
    }
}

async fn upload(
    State(p): State<Arc<Pipelines>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, Failure> {
    let caller = caller(&p, &headers)?;
    if !caller.reaches(&tenant) || p.config().tenant(&tenant).is_none() {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("there is no tenant `{tenant}`"),
        ));
    }
    let digest = p.upload_plugin(&tenant, body.to_vec()).await?;
    Ok((StatusCode::CREATED, Json(json!({ "digest": digest }))).into_response())
}

async fn schema(State(p): State<Arc<Pipelines>>, headers: HeaderMap) -> Result<Response, Failure> {
    caller(&p, &headers)?;
    Ok(Json(walflow_config::Config::json_schema()).into_response())
}

async fn metrics(State(p): State<Arc<Pipelines>>, headers: HeaderMap) -> Result<Response, Failure> {
    let expositions = match caller(&p, &headers)? {
        Caller::Admin => p.expositions(None),
        Caller::Tenant(t) => p.expositions(Some(&t)),
    };
    let content_type = walflow_core::metrics::Exposition::OpenMetrics.content_type();
    Ok((
        [(header::CONTENT_TYPE, content_type)],
        crate::exposition::merge(&expositions),
    )
        .into_response())
}

/// The status page: static, it reads the API with the token the user gives it.
async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        include_str!("status.html"),
    )
        .into_response()
}

/// Overall health, for a load balancer or an orchestrator: no token needed, and no names in
/// the answer beyond a count.
async fn health(State(p): State<Arc<Pipelines>>) -> Response {
    let all = p.list(None);
    let down = all
        .iter()
        .filter(|s| s.status.state != PipelineState::Paused && !s.numbers.healthy)
        .count();
    let body = Json(json!({ "pipelines": all.len(), "not_streaming": down }));
    if down == 0 {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}
