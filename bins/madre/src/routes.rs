//! The HTTP handlers: decode, authenticate, call the flows of
//! `madre-flows`, encode.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::Utc;
use madre_flows::{Answer, IdempotencyKey};
use madre_flows::{PlanFilter, PlanKind};
use madre_models::{
    ActionTaken, BreakerState, CancelResponse, ChatRequest, ChatResponse, ChatV6Request,
    ChatV6Response, ConfirmRequest, ConfirmResponse, ControlRequest, ControlResponse, DepState,
    ErrorBody, HealthResponse, HealthStatus, PlanDetail, PlanPage, SelfControlRequest, Status,
    TaskAccepted, TaskPage, TaskRequest, TaskView, V6Status,
};
use madre_policy::Role;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::{ApiError, clip};
use crate::json::Json;
use crate::request_id::RequestId;
use crate::state::AppState;

type Data = web::Data<AppState>;

/// The answers of every authenticated operation when the caller is refused.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum AuthErrors {
    /// No or bad `X-VX11-Token`.
    #[response(status = 401, description = "No or bad X-VX11-Token")]
    Unauthorized(ErrorBody),
    /// The caller's role is too low.
    #[response(status = 403, description = "Role too low")]
    Forbidden(ErrorBody),
    /// The caller's rate limit is spent.
    #[response(status = 429, description = "Rate limit reached (Retry-After)")]
    RateLimited(ErrorBody),
}

/// The answers of every operation with a JSON body that cannot be used.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum BodyErrors {
    /// Not JSON.
    #[response(status = 400, description = "Malformed JSON")]
    Malformed(ErrorBody),
    /// The body did not arrive in time.
    #[response(status = 408, description = "Body not sent within 10 s")]
    TooSlow(ErrorBody),
    /// Over the body limit.
    #[response(status = 413, description = "Body too large")]
    TooLarge(ErrorBody),
    /// Not sent as application/json.
    #[response(status = 415, description = "Not JSON")]
    NotJson(ErrorBody),
    /// A field broke its rule.
    #[response(status = 422, description = "Invalid field")]
    Invalid(ErrorBody),
}

fn request_id(req: &HttpRequest) -> String {
    use actix_web::HttpMessage;
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(format!("plan {:?} not found", clip(raw))))
}

/// The request's `Idempotency-Key` with what it asks (the path, and the
/// hash of the body), checked against the published pattern; `None`
/// without the header (and then the body is not copied).
fn idempotency_key<T: serde::Serialize>(
    req: &HttpRequest,
    body: &T,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(raw_key) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    // Visible ASCII, inner spaces allowed: exactly the published pattern.
    let bytes = raw_key.as_bytes();
    let visible = |b: &u8| (b'!'..=b'~').contains(b);
    let well_formed = !bytes.is_empty()
        && bytes.len() <= 200
        && bytes.first().is_some_and(visible)
        && bytes.last().is_some_and(visible)
        && bytes.iter().all(|b| (b' '..=b'~').contains(b));
    if !well_formed {
        return Err(ApiError::InvalidField(
            "invalid field `Idempotency-Key`: 1..=200 visible ASCII characters (inner spaces allowed)".into(),
        ));
    }
    let body = to_value(body)?;
    // The endpoint stays readable, so a key reused on another one is named
    // as such rather than as another body.
    let request_hash = format!(
        "{} {}",
        req.path(),
        hex::encode(Sha256::digest(body.to_string().as_bytes()))
    );
    Ok(Some(IdempotencyKey {
        key: String::from_utf8_lossy(bytes).into_owned(),
        request_hash,
    }))
}

/// Names the endpoint when a key is refused because it was first used on
/// another one; any other error passes unchanged.
async fn explain_reuse(
    state: &AppState,
    caller: &Caller,
    key: Option<&IdempotencyKey>,
    error: madre_flows::FlowError,
) -> ApiError {
    let (madre_flows::FlowError::IdempotencyKeyReused, Some(key)) = (&error, key) else {
        return error.into();
    };
    let (principal, raw_key) = (caller.name().to_owned(), key.key.clone());
    let first = state.madre.first_request_of_key(principal, raw_key).await;
    let endpoint = |hash: &str| hash.split_once(' ').map(|(path, _)| path.to_owned());
    match first.ok().flatten().as_deref().and_then(endpoint) {
        Some(first) if Some(&first) != endpoint(&key.request_hash).as_ref() => {
            ApiError::IdempotencyKeyOtherEndpoint(first)
        }
        _ => error.into(),
    }
}

fn json_response(answer: &Answer) -> HttpResponse {
    let status = actix_web::http::StatusCode::from_u16(answer.status)
        .unwrap_or(actix_web::http::StatusCode::OK);
    HttpResponse::build(status).json(&answer.body)
}

fn answer<T: serde::Serialize>(
    status: u16,
    body: &T,
    plan_id: Option<Uuid>,
) -> Result<Answer, madre_flows::FlowError> {
    Ok(Answer {
        status,
        body: serde_json::to_value(body)
            .map_err(|e| madre_flows::FlowError::Internal(e.to_string()))?,
        plan_id,
    })
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /health`: from the background probe table and the database's last
/// write or check; never waits on a module or on the disk.
#[utoipa::path(get, path = "/health", tag = "v7", responses((status = 200, description = "Madre, its database and the last probe of each module", body = HealthResponse)))]
pub async fn health(state: Data) -> HttpResponse {
    let deps = state.madre.health().snapshot();
    let db = match state.madre.storage_fault() {
        None => DepState::Up,
        Some(_) => DepState::Down,
    };
    let breakers = state.madre.delegator().breaker_states();
    let space = state.madre.storage_space();
    let mut warnings = Vec::new();
    if let (true, Some((free, total))) = (space.disk_nearly_full(), space.disk) {
        warnings.push(format!(
            "disk_nearly_full: {} MiB of {} MiB free where the database is; lower MADRE_PLAN_RETENTION_DAYS or add room",
            free >> 20,
            total >> 20
        ));
    }
    let degraded = db == DepState::Down
        || deps.values().any(|s| *s == DepState::Down)
        || breakers.values().any(|b| *b != BreakerState::Closed);
    HttpResponse::Ok().json(HealthResponse {
        module: "madre".into(),
        status: if degraded {
            HealthStatus::Degraded
        } else {
            HealthStatus::Ok
        },
        version: env!("CARGO_PKG_VERSION").into(),
        time: Utc::now(),
        deps,
        db,
        breakers,
        warnings,
    })
}

/// `POST /madre/chat`.
#[utoipa::path(post, path = "/madre/chat", tag = "v7", request_body = ChatRequest, params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]{0,198}[!-~])?$", description = "Replays the first answer of a retried request")), security(("api_token" = [])), responses((status = 200, description = "DONE, WAITING (with confirm_token) or ERROR", body = ChatResponse), AuthErrors, BodyErrors, (status = 503, description = "Queue full", body = ErrorBody)))]
pub async fn chat(
    state: Data,
    caller: Caller,
    req: HttpRequest,
    body: Json<ChatRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Operator)?;
    let key = idempotency_key(&req, &*body)?;
    let command = body.into_inner().validate()?;
    let rid = request_id(&req);
    // Owned: the flow runs to its end on a task of its own even if this
    // request is dropped (cancel safety).
    let madre = state.madre.clone();
    let principal = caller.0.clone();
    let reply = state
        .madre
        .once(&caller.0, key.clone(), move || async move {
            let r = madre.chat(&principal, command, "chat", &rid).await?;
            answer(200, &r, Some(r.plan_id))
        })
        .await;
    match reply {
        Ok(reply) => Ok(json_response(&reply)),
        Err(e) => Err(explain_reuse(&state, &caller, key.as_ref(), e).await),
    }
}

/// `POST /chat` (v6).
#[utoipa::path(post, path = "/chat", tag = "v6", request_body = ChatV6Request, params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]{0,198}[!-~])?$", description = "Replays the first answer of a retried request")), security(("api_token" = [])), responses((status = 200, description = "v6 chat answer", body = ChatV6Response), AuthErrors, BodyErrors, (status = 503, description = "Queue full", body = ErrorBody)))]
pub async fn chat_v6(
    state: Data,
    caller: Caller,
    req: HttpRequest,
    body: Json<ChatV6Request>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Operator)?;
    let key = idempotency_key(&req, &*body)?;
    let command = body.into_inner().validate()?;
    let rid = request_id(&req);
    let madre = state.madre.clone();
    let principal = caller.0.clone();
    let reply = state
        .madre
        .once(&caller.0, key.clone(), move || async move {
            let r = madre.chat(&principal, command, "chat_v6", &rid).await?;
            let actions_taken = r
                .actions
                .iter()
                .map(|a| ActionTaken {
                    module: a.module.as_str().into(),
                    action: a.step_type.as_str().into(),
                    result: a
                        .result
                        .clone()
                        .or_else(|| a.error.clone().map(Value::String))
                        .unwrap_or(Value::Null),
                })
                .collect();
            let v6 = ChatV6Response {
                session_id: r.session_id,
                response: r.response,
                task_id: r.plan_id,
                actions_taken,
                status: match r.status {
                    Status::Error => V6Status::Error,
                    Status::Waiting if r.confirm_token.is_some() => V6Status::PendingConfirmation,
                    _ => V6Status::Ok,
                },
                timestamp: Utc::now(),
                confirm_token: r.confirm_token,
                confirm_expires_at: r.confirm_expires_at,
            };
            answer(200, &v6, Some(r.plan_id))
        })
        .await;
    match reply {
        Ok(reply) => Ok(json_response(&reply)),
        Err(e) => Err(explain_reuse(&state, &caller, key.as_ref(), e).await),
    }
}

/// `POST /madre/control`.
#[utoipa::path(post, path = "/madre/control", tag = "v7", request_body = ControlRequest, security(("api_token" = [])), responses((status = 200, description = "accepted, pending_confirmation or denied", body = ControlResponse), AuthErrors, BodyErrors, (status = 404, description = "Unknown plan", body = ErrorBody), (status = 409, description = "Wrong state", body = ErrorBody), (status = 410, description = "Confirmation expired", body = ErrorBody), (status = 503, description = "Queue full", body = ErrorBody)))]
pub async fn control(
    state: Data,
    caller: Caller,
    req: HttpRequest,
    body: Json<ControlRequest>,
) -> Result<HttpResponse, ApiError> {
    let command = body.into_inner().validate()?;
    let outcome = state
        .madre
        .control(&caller.0, command, &request_id(&req))
        .await?;
    Ok(HttpResponse::Ok().json(outcome.response))
}

/// `POST /task` (v6): 202, runs in the background.
#[utoipa::path(post, path = "/task", tag = "v6", request_body = TaskRequest, params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, pattern = "^[!-~]([ -~]{0,198}[!-~])?$", description = "Replays the first answer of a retried request")), security(("api_token" = [])), responses((status = 202, description = "Accepted; poll /tasks/{id}", body = TaskAccepted), AuthErrors, BodyErrors, (status = 503, description = "Queue full", body = ErrorBody)))]
pub async fn task(
    state: Data,
    caller: Caller,
    req: HttpRequest,
    body: Json<TaskRequest>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Operator)?;
    let key = idempotency_key(&req, &*body)?;
    let task = body.into_inner().validate()?;
    let rid = request_id(&req);
    let madre = state.madre.clone();
    let principal = caller.0.clone();
    let reply = state
        .madre
        .once(&caller.0, key.clone(), move || async move {
            let accepted: TaskAccepted = madre.task(&principal, task, &rid).await?;
            answer(202, &accepted, Some(accepted.task_id))
        })
        .await;
    match reply {
        Ok(reply) => Ok(json_response(&reply)),
        Err(e) => Err(explain_reuse(&state, &caller, key.as_ref(), e).await),
    }
}

/// Query of the list endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    session_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

fn list_args(q: &ListQuery) -> Result<(PlanFilter, u32, Option<i64>), ApiError> {
    let status = q
        .status
        .as_deref()
        .map(|s| s.parse::<Status>())
        .transpose()
        .map_err(|_| {
            ApiError::InvalidField(
                "invalid field `status`: one of PENDING, RUNNING, WAITING, DONE, ERROR, CANCELLED"
                    .into(),
            )
        })?;
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(text) => match text
            .parse::<u32>()
            .ok()
            .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))
        {
            Some(n) if (1..=200).contains(&n) => n,
            _ => {
                return Err(ApiError::InvalidField(
                    "invalid field `limit`: a whole number from 1 to 200".into(),
                ));
            }
        },
    };
    let cursor = q
        .cursor
        .as_deref()
        .map(|c| {
            let digits = !c.is_empty()
                && c.len() <= 18
                && !c.starts_with('0')
                && c.bytes().all(|b| b.is_ascii_digit());
            c.parse::<i64>().ok().filter(|_| digits)
        })
        .map(|c| {
            c.ok_or_else(|| {
                ApiError::InvalidField(
                    "invalid field `cursor`: pass back the next_cursor of a previous page".into(),
                )
            })
        })
        .transpose()?;
    let session_id = q
        .session_id
        .clone()
        .map(madre_models::SessionId::parse)
        .transpose()?
        .map(String::from);
    Ok((
        PlanFilter {
            status,
            session_id,
            kind: None,
        },
        limit,
        cursor,
    ))
}

/// `GET /madre/plans`.
#[utoipa::path(get, path = "/madre/plans", tag = "v7", params(("status" = Option<Status>, Query, description = "Only plans in this status"), ("session_id" = Option<String>, Query, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "Only this session"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Page size, default 20"), ("cursor" = Option<String>, Query, pattern = "^[1-9][0-9]{0,17}$", description = "next_cursor of the previous page")), security(("api_token" = [])), responses((status = 200, description = "Newest first", body = PlanPage), AuthErrors, (status = 422, description = "Bad limit, cursor or status", body = ErrorBody)))]
pub async fn list_plans(
    state: Data,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let (filter, limit, cursor) = list_args(&query)?;
    let (plans, next) = state.madre.list_plans(filter, limit, cursor).await?;
    Ok(HttpResponse::Ok().json(PlanPage {
        plans,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// `GET /tasks` (v6).
#[utoipa::path(get, path = "/tasks", tag = "v6", params(("status" = Option<Status>, Query, description = "Only plans in this status"), ("session_id" = Option<String>, Query, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "Only this session"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Page size, default 20"), ("cursor" = Option<String>, Query, pattern = "^[1-9][0-9]{0,17}$", description = "next_cursor of the previous page")), security(("api_token" = [])), responses((status = 200, description = "Newest first", body = TaskPage), AuthErrors, (status = 422, description = "Bad limit, cursor or status", body = ErrorBody)))]
pub async fn list_tasks(
    state: Data,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let (mut filter, limit, cursor) = list_args(&query)?;
    filter.kind = Some(PlanKind::Task);
    let (tasks, next) = state.madre.list_tasks(filter, limit, cursor).await?;
    Ok(HttpResponse::Ok().json(TaskPage {
        tasks,
        next_cursor: next.map(|n| n.to_string()),
    }))
}

/// `GET /madre/plans/{id}`.
#[utoipa::path(get, path = "/madre/plans/{id}", tag = "v7", params(("id" = String, Path, description = "Plan id (UUID)")), security(("api_token" = [])), responses((status = 200, description = "The plan, its intent and audit rows", body = PlanDetail), AuthErrors, (status = 404, description = "Unknown id", body = ErrorBody), (status = 410, description = "The plan was moved to an archive (`archived`, naming it)", body = ErrorBody)))]
pub async fn get_plan(
    state: Data,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let detail: PlanDetail = state.madre.plan_detail(parse_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(detail))
}

/// `GET /madre/whoami`: the caller's name and role, so a client (the
/// approval page) shows only what the caller may do.
#[utoipa::path(get, path = "/madre/whoami", tag = "v7", security(("api_token" = [])), responses((status = 200, description = "`{name, role}`: role viewer, operator or admin", body = Object), AuthErrors))]
pub async fn whoami(caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    Ok(HttpResponse::Ok().json(json!({
        "name": caller.0.name,
        "role": caller.0.role.as_str(),
    })))
}

/// Query of `GET /madre/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    plan_id: Option<String>,
    session_id: Option<String>,
    last_event_id: Option<String>,
}

/// Messages a reader of the event stream may have waiting before the
/// stream stops reading the journal for it.
const EVENTS_BUFFER: usize = 256;

/// `GET /madre/events`: the journal as Server-Sent Events (SPEC §14).
#[utoipa::path(get, path = "/madre/events", tag = "v7", params(("plan_id" = Option<String>, Query, description = "Only this plan's events"), ("session_id" = Option<String>, Query, pattern = "^[A-Za-z0-9._:-]{1,128}$", description = "Only this session's plans"), ("last_event_id" = Option<i64>, Query, minimum = 0, description = "Replay the events after this seq, then stream live (as the Last-Event-ID header)"), ("Last-Event-ID" = Option<i64>, Header, description = "Replay the events after this seq, then stream live")), security(("api_token" = [])), responses((status = 200, description = "text/event-stream: one message per journal event (`id:` its seq, `event:` its type, `data:` the event as in a plan's `events`), a `: keep-alive` comment after each quiet MADRE_EVENTS_KEEPALIVE_S", content_type = "text/event-stream", body = String), AuthErrors, (status = 422, description = "Bad plan_id, session_id or last event id", body = ErrorBody)))]
pub async fn events(
    state: Data,
    caller: Caller,
    req: HttpRequest,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let query = query.into_inner();
    let filter = madre_flows::JournalFilter {
        plan_id: query
            .plan_id
            .as_deref()
            .map(|id| {
                Uuid::parse_str(id).map_err(|_| {
                    ApiError::InvalidField("invalid field `plan_id`: a plan id (UUID)".into())
                })
            })
            .transpose()?,
        session_id: query
            .session_id
            .map(madre_models::SessionId::parse)
            .transpose()?
            .map(String::from),
    };
    let header = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").to_owned());
    // Where the journal ends when the reader connects, read before the
    // answer starts: what commits after the reader has its answer is sent,
    // also to a reader resuming from past the end (clamped to it here).
    let head = state.madre.journal_head().await?;
    let after = match header.or(query.last_event_id) {
        Some(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::InvalidField(
                    "invalid last event id: the seq of an event (a whole number, 0 for the start)"
                        .into(),
                )
            })?
            .min(head),
        None => head,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(EVENTS_BUFFER);
    let pace = madre_flows::FollowPace {
        keep_alive: state.settings.events_keep_alive,
        ..Default::default()
    };
    let madre = state.madre.clone();
    actix_web::rt::spawn(async move {
        match madre.follow_journal(filter, after, tx, pace).await {
            Ok(madre_flows::FollowEnd::TooSlow) => {
                tracing::info!("an event stream reader fell behind and was disconnected");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "an event stream ended on an error"),
        }
    });
    // Whatever is waiting goes out as one chunk: one write for many events.
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let mut chunk = Vec::new();
        sse_message(&rx.recv().await?, &mut chunk);
        while chunk.len() < SSE_CHUNK
            && let Ok(item) = rx.try_recv()
        {
            sse_message(&item, &mut chunk);
        }
        Some((
            Ok::<_, std::convert::Infallible>(actix_web::web::Bytes::from(chunk)),
            rx,
        ))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}

/// Bytes of event-stream output gathered into one chunk at most (then the
/// rest waits for the next).
const SSE_CHUNK: usize = 64 << 10;

/// Appends one item to `out` as an SSE message.
fn sse_message(item: &madre_flows::FeedItem, out: &mut Vec<u8>) {
    use std::io::Write as _;
    match item {
        madre_flows::FeedItem::KeepAlive => out.extend_from_slice(b": keep-alive\n\n"),
        madre_flows::FeedItem::Event(shared) => {
            // The event's JSON holds no newline: one `data:` line.
            let _ = write!(
                out,
                "id: {}\nevent: {}\ndata: {}\n\n",
                shared.event.seq,
                shared.event.event_type.as_str(),
                shared.json
            );
        }
    }
}

/// `GET /tasks/{id}` (v6).
#[utoipa::path(get, path = "/tasks/{id}", tag = "v6", params(("id" = String, Path, description = "Plan id (UUID)")), security(("api_token" = [])), responses((status = 200, description = "The task", body = TaskView), AuthErrors, (status = 404, description = "Unknown id", body = ErrorBody), (status = 410, description = "The plan was moved to an archive (`archived`, naming it)", body = ErrorBody)))]
pub async fn get_task(
    state: Data,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let stored = state.madre.load_plan(parse_id(&path)?).await?;
    Ok(HttpResponse::Ok().json(TaskView {
        task_id: stored.plan.plan_id,
        name: stored.meta.name.clone(),
        module: stored.meta.module.as_str().to_owned(),
        action: stored.meta.action.clone(),
        status: stored.plan.status,
        result: stored.result.clone(),
        error: stored.plan.error.clone(),
        created_at: stored.plan.created_at,
        updated_at: stored.plan.updated_at,
    }))
}

/// Query accepted by the confirm endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmQuery {
    confirm_token: Option<String>,
}

/// The token and reason of an approval or a rejection: from the JSON body,
/// or the token from the query when there is no body.
async fn approval_request(
    state: &Data,
    req: &HttpRequest,
    query: ConfirmQuery,
    payload: web::Payload,
) -> Result<madre_models::ConfirmRequest, ApiError> {
    let body = crate::json::read_body(payload, state.settings.max_body_bytes).await?;
    let request = if body.is_empty() {
        madre_models::ConfirmRequest {
            confirm_token: query.confirm_token.unwrap_or_default(),
            reason: None,
            fingerprint: None,
        }
    } else if !crate::json::is_json(req) {
        return Err(ApiError::UnsupportedMediaType);
    } else {
        crate::json::decode(&body)?
    };
    if request.confirm_token.is_empty() || request.confirm_token.len() > 256 {
        return Err(ApiError::InvalidField(
            "invalid field `confirm_token`: required (body or query), 1..=256 characters".into(),
        ));
    }
    Ok(request)
}

/// What an approver presented, as the flows take it.
fn approval_of(request: &madre_models::ConfirmRequest) -> madre_flows::Approval<'_> {
    madre_flows::Approval {
        token: &request.confirm_token,
        reason: request.reason.as_deref(),
        fingerprint: request.fingerprint.as_deref(),
    }
}

/// `POST /madre/plans/{id}/confirm`: one approval, with the token in the
/// JSON body (and an optional reason) or the query.
#[utoipa::path(post, path = "/madre/plans/{id}/confirm", tag = "v7", params(("id" = String, Path, description = "Plan id (UUID)")), request_body(content = ConfirmRequest, description = "The token and the approver's reason (a `confirm_token` query parameter is accepted instead of a body)"), security(("api_token" = [])), responses((status = 200, description = "`confirmed`: the last approval needed, and the plan ran; `approved`: recorded, more approvals needed (plan_status WAITING)", body = ConfirmResponse), (status = 202, description = "Confirmed, still running", body = ConfirmResponse), AuthErrors, BodyErrors, (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "Not waiting, or this principal already approved", body = ErrorBody), (status = 410, description = "Expired", body = ErrorBody), (status = 503, description = "Queue full", body = ErrorBody)))]
pub async fn confirm(
    state: Data,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ConfirmQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let plan_id = parse_id(&path)?;
    let request = approval_request(&state, &req, query.into_inner(), payload).await?;
    let confirmed = state
        .madre
        .confirm(&caller.0, plan_id, approval_of(&request), &request_id(&req))
        .await?;
    let status = confirmed.plan.plan.status;
    let body = ConfirmResponse {
        status: if confirmed.confirmed() {
            "confirmed"
        } else {
            "approved"
        }
        .into(),
        approvals: confirmed.approvals,
        required: confirmed.required,
        plan_id,
        plan_status: status,
    };
    Ok(if matches!(status, Status::Running | Status::Pending) {
        HttpResponse::Accepted().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
}

/// `POST /madre/plans/{id}/reject`: refuses a waiting plan, with its token
/// and a reason.
#[utoipa::path(post, path = "/madre/plans/{id}/reject", tag = "v7", params(("id" = String, Path, description = "Plan id (UUID)")), request_body(content = ConfirmRequest, description = "The token and why the plan is refused (required)"), security(("api_token" = [])), responses((status = 200, description = "Rejected: the plan is CANCELLED with reason `rejected`", body = CancelResponse), AuthErrors, BodyErrors, (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "Not waiting", body = ErrorBody), (status = 410, description = "Expired", body = ErrorBody)))]
pub async fn reject(
    state: Data,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<ConfirmQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let plan_id = parse_id(&path)?;
    let request = approval_request(&state, &req, query.into_inner(), payload).await?;
    let plan_status = state
        .madre
        .reject(&caller.0, plan_id, approval_of(&request))
        .await?;
    Ok(HttpResponse::Ok().json(CancelResponse {
        plan_id,
        plan_status,
    }))
}

/// `POST /madre/plans/{id}/cancel` and `POST /tasks/{id}/cancel`.
#[utoipa::path(post, path = "/madre/plans/{id}/cancel", tag = "v7", params(("id" = String, Path, description = "Plan id (UUID)")), security(("api_token" = [])), responses((status = 200, description = "Cancelled", body = CancelResponse), AuthErrors, (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "Already finished", body = ErrorBody)))]
pub async fn cancel(
    state: Data,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let plan_id = parse_id(&path)?;
    let plan_status = state.madre.cancel(&caller.0, plan_id).await?;
    Ok(HttpResponse::Ok().json(CancelResponse {
        plan_id,
        plan_status,
    }))
}

/// `POST /tasks/{id}/cancel` (v6): as the v7 cancel.
#[utoipa::path(post, path = "/tasks/{id}/cancel", tag = "v6", params(("id" = String, Path, description = "Task id (UUID)")), security(("api_token" = [])), responses((status = 200, description = "Cancelled", body = CancelResponse), AuthErrors, (status = 404, description = "Unknown id", body = ErrorBody), (status = 409, description = "Already finished", body = ErrorBody)))]
pub async fn task_cancel(
    state: Data,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    cancel(state, caller, path).await
}

/// `POST /control` (v6): Madre's own status (viewer) or restart (admin, MED).
#[utoipa::path(post, path = "/control", tag = "v6", request_body = SelfControlRequest, security(("api_token" = [])), responses((status = 200, description = "Madre status; a restart answers pending_confirmation with a token, and runs once re-posted with it", body = Object), AuthErrors, BodyErrors, (status = 409, description = "Not waiting, or a file could not be reloaded", body = ErrorBody), (status = 410, description = "Confirmation expired", body = ErrorBody)))]
pub async fn self_control(
    state: Data,
    caller: Caller,
    req: HttpRequest,
    body: Json<SelfControlRequest>,
) -> Result<HttpResponse, ApiError> {
    match body.action.as_str() {
        "status" => {
            caller.require(Role::Viewer)?;
            Ok(HttpResponse::Ok()
                .json(json!({ "status": "ok", "result": state.madre.own_status() })))
        }
        "restart" => {
            caller.require(Role::Admin)?;
            let body = body.into_inner();
            let command = ControlRequest {
                target: "madre".into(),
                action: "restart".into(),
                params: None,
                confirm_token: body.confirm_token,
            }
            .validate()?;
            let outcome = state
                .madre
                .control(&caller.0, command, &request_id(&req))
                .await?;
            Ok(HttpResponse::Ok().json(outcome.response))
        }
        _ => Err(ApiError::InvalidField(
            "invalid field `action`: \"status\" or \"restart\"".into(),
        )),
    }
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "v7", security(("api_token" = [])), responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain"), AuthErrors))]
pub async fn metrics(state: Data, caller: Caller) -> Result<HttpResponse, ApiError> {
    caller.require(Role::Viewer)?;
    let madre = &state.madre;
    let counts = madre.plan_counts().await?;
    let mut out = String::new();
    state.metrics.render_requests(&mut out);
    out.push_str("# HELP madre_plans Plans by status.\n# TYPE madre_plans gauge\n");
    for (status, n) in counts {
        let _ = writeln!(out, "madre_plans{{status=\"{status}\"}} {n}");
    }
    out.push_str("# HELP madre_module_up 1 when the module's last probe answered.\n# TYPE madre_module_up gauge\n");
    for (module, dep) in madre.health().snapshot() {
        let _ = writeln!(
            out,
            "madre_module_up{{module=\"{module}\"}} {}",
            u8::from(dep == DepState::Up)
        );
    }
    out.push_str("# HELP madre_module_breaker 1 for the state each module's circuit breaker is in (closed, open, half_open).\n# TYPE madre_module_breaker gauge\n");
    for (module, current) in madre.delegator().breaker_states() {
        for state in BreakerState::ALL {
            let _ = writeln!(
                out,
                "madre_module_breaker{{module=\"{module}\",state=\"{}\"}} {}",
                state.as_str(),
                u8::from(state == current)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP madre_queue_depth Plans waiting for a slot.\n# TYPE madre_queue_depth gauge\nmadre_queue_depth {}",
        madre.runner().queued()
    );
    let _ = writeln!(
        out,
        "# HELP madre_plans_executing Plans holding a runner slot now (calling modules; a plan whose end is committing has given its slot on).\n# TYPE madre_plans_executing gauge\nmadre_plans_executing {}",
        madre.runner().running()
    );
    crate::metrics::render_writer(&mut out, madre.writer_stats());
    crate::metrics::render_storage(&mut out, &madre.storage_space());
    let _ = writeln!(
        out,
        "# HELP madre_event_stream_readers Readers of GET /madre/events now.\n# TYPE madre_event_stream_readers gauge\nmadre_event_stream_readers {}",
        madre.event_stream_readers()
    );
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out))
}

/// A known path with a method it does not serve: JSON 405 with `Allow`.
pub fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    use actix_web::ResponseError;
    let error = ApiError::MethodNotAllowed(format!(
        "{} is not served on {}; use {allow}",
        req.method(),
        clip(req.path())
    ));
    let mut response = error.error_response();
    response.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_static(allow),
    );
    response
}

/// Unknown routes: JSON 404.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route {} {}",
        req.method(),
        clip(req.path())
    )))
}
