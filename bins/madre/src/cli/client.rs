//! The HTTP side of the client subcommands: requests to a running Madre,
//! paging through plan listings and finding a plan by the start or end of its id.

use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

use super::render;

/// How long one request may take; a chat that runs a whole plan can be slow.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(180);
/// The largest answer read (a page of 200 plans is far smaller).
const BODY_LIMIT: usize = 16 << 20;
/// The page size used to find a plan by a short id.
const SCAN_PAGE: u32 = 200;
/// How many pages of the newest plans a short id is looked for in.
const SCAN_PAGES: usize = 25;

/// A successful answer's body: JSON as the API sends it, or text when the
/// server sent something else.
#[derive(Debug)]
pub(super) enum Body {
    /// A JSON document.
    Json(Value),
    /// Anything that is not JSON, as UTF-8 (lossy).
    Text(String),
}

impl Body {
    fn from_bytes(bytes: &[u8]) -> Self {
        match serde_json::from_slice(bytes) {
            Ok(value) => Self::Json(value),
            Err(_) => Self::Text(String::from_utf8_lossy(bytes).into_owned()),
        }
    }
}

/// Why a client subcommand failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// No answer from the server.
    Unreachable {
        /// The server's URL.
        base: String,
        /// What went wrong.
        error: String,
    },
    /// The server answered with an error status.
    Http {
        /// Status code and reason, e.g. `409 Conflict`.
        status: String,
        /// The error body.
        body: Body,
        /// The `Retry-After` header, when there was one.
        retry_after: Option<String>,
    },
    /// The request could not be made as given (an unknown or ambiguous
    /// short plan id).
    Usage(String),
}

impl Failure {
    /// The message for stderr: the error body as the API sent it with
    /// `--json`, a one-line summary otherwise.
    pub(super) fn message(&self, as_json: bool) -> String {
        match self {
            Self::Unreachable { base, error } => format!("cannot reach {base}: {error}"),
            Self::Usage(message) => message.clone(),
            Self::Http { status, body, .. } if as_json => match body {
                Body::Json(value) => format!("HTTP {status}\n{}", render::json(value)),
                Body::Text(text) => format!("HTTP {status}\n{text}"),
            },
            Self::Http {
                status,
                body,
                retry_after,
            } => {
                let value = match body {
                    Body::Json(value) => value.clone(),
                    Body::Text(text) => Value::String(text.clone()),
                };
                render::failure(status, &value, retry_after.as_deref())
            }
        }
    }
}

/// A running Madre, reached over HTTP.
pub(super) struct Api {
    client: awc::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// The server at `base` (`http://host:port`), called with `token`.
    pub(super) fn new(base: &str, token: Option<String>) -> Self {
        Self {
            client: awc::Client::builder().timeout(REQUEST_TIMEOUT).finish(),
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// `GET path?query`.
    pub(super) async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Body, Failure> {
        self.send(self.client.get(format!("{}{path}", self.base)), query, None)
            .await
    }

    /// `POST path` with an optional JSON body.
    pub(super) async fn post(&self, path: &str, body: Option<Value>) -> Result<Body, Failure> {
        self.send(self.client.post(format!("{}{path}", self.base)), &[], body)
            .await
    }

    async fn send(
        &self,
        request: awc::ClientRequest,
        query: &[(&str, &str)],
        body: Option<Value>,
    ) -> Result<Body, Failure> {
        let unreachable = |error: String| Failure::Unreachable {
            base: self.base.clone(),
            error,
        };
        let mut request = if query.is_empty() {
            request
        } else {
            request
                .query(&query)
                .map_err(|e| unreachable(e.to_string()))?
        };
        if let Some(token) = &self.token {
            request = request.insert_header(("X-VX11-Token", token.as_str()));
        }
        let sent = match body {
            Some(body) => request.send_json(&body).await,
            None => request.send().await,
        };
        let mut response = sent.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .body()
            .limit(BODY_LIMIT)
            .await
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        let body = Body::from_bytes(&bytes);
        if status.is_success() {
            Ok(body)
        } else {
            Err(Failure::Http {
                status: status.to_string(),
                body,
                retry_after,
            })
        }
    }

    /// Follows `GET /madre/events?query`, handing `on_event` the JSON of
    /// each journal event as it comes (keep-alive comments are skipped)
    /// until it answers false. A stream that ends before that is a failure:
    /// the server stopped or let this reader go.
    pub(super) async fn follow(
        &self,
        query: &[(&str, &str)],
        mut on_event: impl FnMut(&Value) -> bool,
    ) -> Result<(), Failure> {
        use futures_util::StreamExt;
        let unreachable = |error: String| Failure::Unreachable {
            base: self.base.clone(),
            error,
        };
        // No timeout: a quiet stream may last as long as the plan waits.
        let client = awc::Client::builder().disable_timeout().finish();
        let mut request = client
            .get(format!("{}/madre/events", self.base))
            .query(&query)
            .map_err(|e| unreachable(e.to_string()))?;
        if let Some(token) = &self.token {
            request = request.insert_header(("X-VX11-Token", token.as_str()));
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !response.status().is_success() {
            let status = response.status().to_string();
            let bytes = response.body().limit(BODY_LIMIT).await.unwrap_or_default();
            return Err(Failure::Http {
                status,
                body: Body::from_bytes(&bytes),
                retry_after: None,
            });
        }
        let mut pending = Vec::new();
        while let Some(chunk) = response.next().await {
            let chunk = chunk.map_err(|e| unreachable(format!("reading the events: {e}")))?;
            pending.extend_from_slice(&chunk);
            while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
                let message: Vec<u8> = pending.drain(..end + 2).collect();
                let Some(data) = sse_data(&message) else {
                    continue;
                };
                if !on_event(&data) {
                    return Ok(());
                }
            }
        }
        Err(unreachable("the event stream ended".into()))
    }

    /// One page of `GET /madre/plans`.
    pub(super) async fn plans_page(
        &self,
        status: Option<&str>,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Body, Failure> {
        let limit = limit.to_string();
        let mut query = vec![("limit", limit.as_str())];
        query.extend(status.map(|s| ("status", s)));
        query.extend(cursor.map(|c| ("cursor", c)));
        self.get("/madre/plans", &query).await
    }

    /// Every page of `GET /madre/plans`, following `next_cursor`, as one
    /// page-shaped document (`{"plans": [...], "next_cursor": null}`).
    pub(super) async fn all_plans(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> Result<Body, Failure> {
        let mut plans = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = match self.plans_page(status, limit, cursor.as_deref()).await? {
                Body::Json(page) => page,
                text @ Body::Text(_) => return Ok(text),
            };
            plans.extend(page["plans"].as_array().into_iter().flatten().cloned());
            let next = page["next_cursor"].as_str().map(str::to_owned);
            // A cursor handed back twice would loop forever.
            if next.is_none() || next == cursor {
                break;
            }
            cursor = next;
        }
        Ok(Body::Json(json!({ "plans": plans, "next_cursor": null })))
    }

    /// The full id of the plan `id` names: `id` itself when it is a UUID
    /// (or cannot be part of one, so the server answers for it), else the
    /// one plan among the newest whose id ends with it (the short id tables
    /// show) or starts with it.
    pub(super) async fn resolve(&self, id: &str) -> Result<String, Failure> {
        if Uuid::parse_str(id).is_ok() || !could_start_an_id(id) {
            return Ok(id.to_owned());
        }
        let part = id.to_ascii_lowercase();
        let mut found: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..SCAN_PAGES {
            let Body::Json(page) = self.plans_page(None, SCAN_PAGE, cursor.as_deref()).await?
            else {
                break;
            };
            found.extend(
                page["plans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["plan_id"].as_str())
                    .filter(|p| p.ends_with(&part) || p.starts_with(&part))
                    .map(str::to_owned),
            );
            let next = page["next_cursor"].as_str().map(str::to_owned);
            if found.len() > 1 || next.is_none() || next == cursor {
                break;
            }
            cursor = next;
        }
        match found.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Failure::Usage(format!(
                "no plan id ends or starts with {id} among the newest {} plans; give the full id",
                SCAN_PAGE as usize * SCAN_PAGES
            ))),
            many => Err(Failure::Usage(format!(
                "{id} is part of several plan ids ({}); give more of it",
                many.join(", ")
            ))),
        }
    }
}

/// True for 4 to 35 characters that could be the start or end of a UUID.
fn could_start_an_id(id: &str) -> bool {
    (4..36).contains(&id.len()) && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// `s` as one URL path segment: unreserved characters as they are, the rest
/// percent-encoded, so an id cannot change the path.
pub(super) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The JSON of an SSE message's `data:` line; `None` for a comment or a
/// message without JSON data.
fn sse_data(message: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(message).ok()?;
    let data = text.lines().find_map(|line| line.strip_prefix("data:"))?;
    serde_json::from_str(data.trim_start()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hex_prefixes_are_looked_up() {
        let check = |id: &str, expected: bool| assert_eq!(could_start_an_id(id), expected, "{id}");
        check("7c9e", true);
        check("7c9e6679-74", true);
        check("7C9E6679", true);
        check("7c9", false);
        check("not-a-plan", false);
        check("7c9e6679-7425-40de-944b-e07fc1f90ae7", false);
    }

    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(segment("7c9e-AB_.~"), "7c9e-AB_.~");
        assert_eq!(segment("a/b?c d"), "a%2Fb%3Fc%20d");
        assert_eq!(segment("é"), "%C3%A9");
    }
}
