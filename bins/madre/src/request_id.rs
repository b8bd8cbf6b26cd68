//! Every request gets an id: the caller's `X-Request-Id` when it is sane,
//! else a new UUID. It is returned in the `X-Request-Id` header, in error
//! bodies, in logs and sent on to the modules.

use actix_web::HttpMessage;
use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{HeaderName, HeaderValue};
use tracing::Instrument;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being handled ("" outside a request).
pub fn current() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

/// The id stored in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn sane(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Middleware body: tags the request, runs it inside the id's scope and
/// stamps the response (an answer to `HEAD` loses its body here).
pub fn tag<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>>
+ use<S, B>
where
    S: actix_web::dev::Service<
            ServiceRequest,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
        >,
    S::Future: 'static,
    B: 'static,
{
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let head = req.method() == Method::HEAD;
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.path());
    let call = srv.call(req);
    async move {
        let started = std::time::Instant::now();
        let mut response = REQUEST_ID
            .scope(id.clone(), call)
            .instrument(span.clone())
            .await?;
        span.in_scope(|| {
            tracing::info!(
                status = response.status().as_u16(),
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "request answered"
            );
        });
        if let Ok(value) = HeaderValue::from_str(&id) {
            response
                .headers_mut()
                .insert(HeaderName::from_static("x-request-id"), value);
        }
        // An answer to HEAD is sent without its body whatever its length
        // says; an empty one keeps the connection's framing exact for
        // `before_routing`.
        Ok(if head {
            response.map_body(|_, _| EitherBody::right(BoxBody::new(())))
        } else {
            response.map_into_left_body()
        })
    }
}
