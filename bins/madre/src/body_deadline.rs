//! A deadline for request bodies. actix-web's `client_request_timeout` cuts
//! a client that is slow to send its request head, but nothing bounds the
//! body: a client could announce 1,000 bytes and send one a minute, holding
//! a connection and a handler forever. Every request that carries a body
//! gets [`BODY_TIMEOUT`] to deliver it, then fails with 408.

use actix_web::HttpMessage;
use actix_web::dev::{Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::http::header;
use futures_util::StreamExt;
use std::time::Duration;

/// How long a client may take to send a request body, once its head is in.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// The error a late body ends with; [`is_timeout`] recognises it.
fn late() -> PayloadError {
    PayloadError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "the request body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        ),
    ))
}

/// Whether a payload failed because its deadline passed.
pub fn is_timeout(err: &PayloadError) -> bool {
    matches!(err, PayloadError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut)
}

/// Gives the request's body, if it has one, [`BODY_TIMEOUT`] to arrive.
pub fn limit(req: &mut ServiceRequest) {
    let headers = req.headers();
    if !headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::TRANSFER_ENCODING)
    {
        return;
    }
    let body = req.take_payload();
    let deadline = Box::pin(tokio::time::sleep(BODY_TIMEOUT));
    let bounded = futures_util::stream::unfold(Some((body, deadline)), |state| async move {
        let (mut body, mut deadline) = state?;
        tokio::select! {
            chunk = body.next() => chunk.map(|chunk| (chunk, Some((body, deadline)))),
            () = &mut deadline => Some((Err(late()), None)),
        }
    });
    req.set_payload(Payload::Stream {
        payload: Box::pin(bounded),
    });
}
