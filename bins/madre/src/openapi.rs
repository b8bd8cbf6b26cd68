//! `GET /openapi.json`: the API described from the handlers and the
//! madre-models types (utoipa), so clients and schema-driven fuzzers can
//! rely on it.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The whole API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Madre", description = "The VX11 orchestrator: chat, plans, confirmations, delegation."),
    paths(
        routes::health,
        routes::chat,
        routes::control,
        routes::list_plans,
        routes::events,
        routes::whoami,
        routes::get_plan,
        routes::confirm,
        routes::reject,
        routes::cancel,
        routes::metrics,
        routes::chat_v6,
        routes::task,
        routes::list_tasks,
        routes::get_task,
        routes::task_cancel,
        routes::self_control,
        openapi_json,
    ),
    modifiers(&TokenHeader),
)]
pub struct ApiDoc;

/// Declares the `X-VX11-Token` header scheme the paths refer to.
struct TokenHeader;

impl Modify for TokenHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-VX11-Token"))),
        );
    }
}

/// `GET /openapi.json` (any role: like every endpoint but `/health`, it
/// needs the token).
#[utoipa::path(get, path = "/openapi.json", tag = "v7", security(("api_token" = [])), responses((status = 200, description = "This document", body = Object), (status = 401, description = "No or bad X-VX11-Token", body = madre_models::ErrorBody), (status = 429, description = "Rate limit reached (Retry-After)", body = madre_models::ErrorBody)))]
pub async fn openapi_json(
    caller: crate::auth::Caller,
) -> Result<HttpResponse, crate::error::ApiError> {
    caller.require(madre_policy::Role::Viewer)?;
    Ok(HttpResponse::Ok().json(ApiDoc::openapi()))
}
