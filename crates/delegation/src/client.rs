//! The process's one HTTP client: awc confined to a thread of its own
//! (`madre-http`, running an actix system), reached through [`HttpClient`],
//! a `Send + Sync` handle that sends it owned [`Exchange`]s over a channel.
//!
//! awc's client and futures are `!Send` (they hold `Rc`s) and spawn on
//! actix's thread-local executor, so they cannot run on a multi-threaded
//! Tokio runtime, nor on any runtime without a `LocalSet`. Everything awc
//! touches therefore stays on the client thread: the connection pool, each
//! request, the per-call timeout (so the caller's runtime needs no timer)
//! and the reading of the answer. Only owned data crosses: the request's
//! URL, headers and serialized body one way, the status and the body bytes
//! back. A caller that drops its future (a cancelled step) closes the reply
//! channel, which abandons the exchange on the client thread too.

use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The owned form of one HTTP exchange, sent to the client thread.
#[derive(Debug)]
pub(crate) struct Exchange {
    /// `GET` without a body, or `POST` with a JSON one.
    pub(crate) method: crate::Method,
    /// The full URL.
    pub(crate) url: String,
    /// Sent as `X-VX11-Token`; kept secret until it is written (and out of
    /// `Debug`).
    pub(crate) token: SecretString,
    /// Other headers, sent as given.
    pub(crate) headers: Vec<(&'static str, String)>,
    /// A JSON body, already serialized (sent as `application/json`).
    pub(crate) body: Option<Bytes>,
    /// Deadline for the whole exchange: connect, send, and read the answer.
    pub(crate) timeout: Duration,
    /// The most answer bytes read.
    pub(crate) limit: usize,
}

/// What came back from an exchange that got an answer head.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The HTTP status.
    pub(crate) status: u16,
    /// The whole answer body, or why it could not be read.
    pub(crate) body: Result<Bytes, BodyError>,
}

/// Why an answer's body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Longer than the exchange's limit.
    TooLarge,
    /// The connection failed while reading (reset, truncated body…).
    Broken(String),
}

/// Exchanges waiting for the client thread to take them, at most. The
/// thread takes each one at once (it only spawns it), so the channel fills
/// only when that thread is starved; then a caller waits for room within
/// its own deadline, and past it gets [`ExchangeError::Busy`] instead of
/// growing the queue without bound.
pub(crate) const JOB_QUEUE: usize = 1024;

/// Why an exchange got no answer.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The client thread's queue stayed full until the deadline: the
    /// exchange was never sent, and says nothing about the module.
    Busy,
    /// The deadline passed first.
    Timeout,
    /// No connection, or it failed before an answer head arrived; also used
    /// when the client thread is gone.
    Unreachable(String),
}

struct Job {
    exchange: Exchange,
    reply: oneshot::Sender<Result<Answer, ExchangeError>>,
}

/// A handle to the client thread; cheap to clone, usable from any thread
/// and any Tokio runtime.
#[derive(Clone)]
pub(crate) struct HttpClient {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("thread_alive", &!self.jobs.is_closed())
            .finish()
    }
}

impl HttpClient {
    /// The process-wide client (SPEC §7: one client, with connection reuse,
    /// for the whole process). Its thread starts on first use and lives as
    /// long as the process; it is idle when there is nothing to send. One
    /// pool for every caller, whichever thread or runtime it runs on, is
    /// what keeps sequential calls on one connection.
    pub(crate) fn global() -> HttpClient {
        static GLOBAL: OnceLock<HttpClient> = OnceLock::new();
        GLOBAL.get_or_init(HttpClient::start).clone()
    }

    fn start() -> HttpClient {
        let (jobs, queue) = mpsc::channel(JOB_QUEUE);
        // If the thread cannot be spawned, `queue` is dropped with the
        // closure and every exchange answers `Unreachable`.
        let spawned = std::thread::Builder::new()
            .name("madre-http".into())
            .spawn(move || serve(queue));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the HTTP client thread");
        }
        HttpClient { jobs }
    }

    /// Runs `exchange` on the client thread and waits for its outcome. The
    /// returned future is `Send`; dropping it abandons the exchange.
    pub(crate) async fn send(&self, exchange: Exchange) -> Result<Answer, ExchangeError> {
        let gone = || ExchangeError::Unreachable("the HTTP client thread has stopped".into());
        let (reply, answer) = oneshot::channel();
        let deadline = exchange.timeout;
        match tokio::time::timeout(deadline, self.jobs.send(Job { exchange, reply })).await {
            Err(_) => return Err(ExchangeError::Busy),
            Ok(Err(_)) => return Err(gone()),
            Ok(Ok(())) => {}
        }
        answer.await.map_err(|_| gone())?
    }
}

/// The client thread: one awc client (one connection pool) for every job.
fn serve(mut queue: mpsc::Receiver<Job>) {
    actix_rt::System::new().block_on(async move {
        let client = awc::Client::builder()
            // Deadlines are ours (`Exchange::timeout`), over the whole exchange.
            .disable_timeout()
            .connector(awc::Connector::new().limit(512))
            .finish();
        while let Some(Job {
            exchange,
            mut reply,
        }) = queue.recv().await
        {
            let client = client.clone();
            actix_rt::spawn(async move {
                tokio::select! {
                    outcome = run(&client, exchange) => {
                        let _ = reply.send(outcome);
                    }
                    // The caller gave up (e.g. its step was cancelled).
                    () = reply.closed() => {}
                }
            });
        }
    });
}

async fn run(client: &awc::Client, exchange: Exchange) -> Result<Answer, ExchangeError> {
    let Exchange {
        method,
        url,
        token,
        headers,
        body,
        timeout,
        limit,
    } = exchange;
    let mut request = match method {
        crate::Method::Get => client.get(&url),
        crate::Method::Post => client.post(&url),
    }
    .insert_header(("X-VX11-Token", token.expose_secret()));
    for header in headers {
        request = request.insert_header(header);
    }
    let work = async {
        let mut response = match body {
            Some(body) => {
                request
                    .content_type("application/json")
                    .send_body(body)
                    .await
            }
            None => request.send().await,
        }
        .map_err(|e| ExchangeError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        // Connection reuse: awc returns the connection to the pool only when
        // the body has been read to its end (the payload stream sees EOF and
        // releases it synchronously, before this future completes). An
        // answer dropped unread closes its connection instead. So every
        // answer is read whole, probes and error statuses included, and the
        // next call, even one made at once, finds the connection idle.
        // (Issue 12: sequential calls used to open several connections
        // because each actix worker thread had a client and pool of its own,
        // and because probes dropped the `/health` answer unread, closing a
        // connection per module at every probe.)
        let body = response.body().limit(limit).await.map_err(|e| match e {
            awc::error::PayloadError::Overflow => BodyError::TooLarge,
            e => BodyError::Broken(e.to_string()),
        });
        Ok(Answer { status, body })
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ExchangeError::Timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(timeout_ms: u64) -> Exchange {
        Exchange {
            method: crate::Method::Get,
            url: "http://127.0.0.1:9/health".into(),
            token: SecretString::from("t"),
            headers: Vec::new(),
            body: None,
            timeout: Duration::from_millis(timeout_ms),
            limit: 1024,
        }
    }

    /// A full job queue makes a caller wait at most its deadline, then
    /// answers `Busy`: the queue never grows past its bound.
    #[tokio::test]
    async fn a_full_job_queue_answers_busy_within_the_deadline() {
        // A client whose thread takes nothing: one job fills its queue.
        let (jobs, mut queue) = mpsc::channel(1);
        let client = HttpClient { jobs };
        let waiting = tokio::spawn({
            let client = client.clone();
            async move { client.send(exchange(60_000)).await }
        });
        while client.jobs.capacity() > 0 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let busy = client.send(exchange(50)).await;
        assert!(matches!(busy, Err(ExchangeError::Busy)), "{busy:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // Once the thread takes the first job, there is room again.
        let first = queue.recv().await.unwrap();
        drop(first);
        let gone = waiting.await.unwrap();
        assert!(
            matches!(gone, Err(ExchangeError::Unreachable(_))),
            "{gone:?}"
        );
    }
}
