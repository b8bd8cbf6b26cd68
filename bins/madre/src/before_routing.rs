//! Answers the HTTP layer writes before a request reaches the router get a
//! request id too. actix-http's connection dispatcher answers some requests
//! itself, with a bare status and no body: 408 when a request head is too
//! slow, 431 when it is too large, 400 when it is not HTTP. No middleware
//! sees those, so they would leave without `X-Request-Id`.
//!
//! [`Stamped`] wraps each connection and reads what the server writes: it
//! follows the HTTP/1.1 framing of the answers (each head, then its body by
//! `Content-Length` or chunked encoding) and, for a head without
//! `X-Request-Id`, adds one. A bare error answer (status 400 or more, empty
//! body) becomes the SPEC §9 JSON error with that id, and is logged with
//! it. Everything else passes as it was written; bodies are passed on
//! without being copied once their head is through.
//!
//! The framing must be exact for this to be safe: the server's answers to
//! `HEAD` requests carry no body whatever their `Content-Length` says, so
//! the request-id middleware answers `HEAD` with an empty body (see
//! [`crate::request_id`]). Anything this module cannot follow (an answer
//! with no length that ends when the connection closes, an upgrade, a head
//! over [`MAX_HEAD_BYTES`]) is passed through untouched to the end of the
//! connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest answer head this module reads; Madre's are well under 1 KiB.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// How the bytes written next are framed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    /// An answer head, accumulated until its blank line.
    Head,
    /// This many body bytes, then the next head.
    Body(u64),
    /// A chunked body.
    Chunked(Chunk),
    /// Not followed any more: everything passes to the end.
    Raw,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line (its bytes so far).
    Size(Vec<u8>),
    /// This many data bytes of the chunk.
    Data(u64),
    /// The CRLF after a chunk's data (bytes of it left).
    DataEnd(u8),
    /// Trailer lines after the last chunk; the count is the current
    /// line's length so far (CR not counted).
    Trailers(usize),
}

/// Follows the answers written on one connection and stamps the heads that
/// lack `X-Request-Id`: a pure transformer from the bytes the server writes
/// to the bytes the client gets.
#[derive(Debug)]
pub struct Stamper {
    framing: Framing,
    head: Vec<u8>,
}

impl Default for Stamper {
    fn default() -> Self {
        Self {
            framing: Framing::Head,
            head: Vec::new(),
        }
    }
}

impl Stamper {
    /// How many of the next bytes may pass untouched, without a copy (body
    /// bytes of known length, or everything once not followed).
    pub fn passthrough(&self) -> usize {
        match self.framing {
            Framing::Body(n) | Framing::Chunked(Chunk::Data(n)) => {
                usize::try_from(n).unwrap_or(usize::MAX)
            }
            Framing::Raw => usize::MAX,
            _ => 0,
        }
    }

    /// Records that `n` bytes (at most [`Stamper::passthrough`]) passed.
    pub fn passed(&mut self, n: usize) {
        let n = n as u64;
        self.framing = match std::mem::replace(&mut self.framing, Framing::Raw) {
            Framing::Body(left) if left > n => Framing::Body(left - n),
            Framing::Body(_) => Framing::Head,
            Framing::Chunked(Chunk::Data(left)) if left > n => {
                Framing::Chunked(Chunk::Data(left - n))
            }
            Framing::Chunked(Chunk::Data(_)) => Framing::Chunked(Chunk::DataEnd(2)),
            other => other,
        };
    }

    /// Takes `input` as written by the server and appends what the client
    /// gets to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            let pass = self.passthrough().min(input.len());
            if pass > 0 {
                out.extend_from_slice(&input[..pass]);
                self.passed(pass);
                input = &input[pass..];
                continue;
            }
            match std::mem::replace(&mut self.framing, Framing::Raw) {
                Framing::Head => {
                    self.framing = Framing::Head;
                    let taken = self.take_head(input, out);
                    input = &input[taken..];
                }
                Framing::Chunked(chunk) => {
                    let byte = input[0];
                    out.push(byte);
                    input = &input[1..];
                    self.framing = step_chunk(chunk, byte).unwrap_or(Framing::Raw);
                }
                // Covered by `passthrough`.
                other @ (Framing::Body(_) | Framing::Raw) => {
                    self.framing = other;
                    out.extend_from_slice(input);
                    return;
                }
            }
        }
    }

    /// Accumulates head bytes from `input`; when the head is complete,
    /// writes it (stamped if need be) to `out`. Answers how many bytes of
    /// `input` it took.
    fn take_head(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        // The blank line may straddle two writes: look from 3 bytes back.
        let from = self.head.len().saturating_sub(3);
        self.head.extend_from_slice(input);
        let Some(end) = find(&self.head[from..], b"\r\n\r\n").map(|i| from + i + 4) else {
            if self.head.len() > MAX_HEAD_BYTES {
                out.append(&mut self.head);
                self.framing = Framing::Raw;
            }
            return input.len();
        };
        let taken = input.len() - (self.head.len() - end);
        self.head.truncate(end);
        self.framing = stamp(&self.head, out);
        self.head.clear();
        taken
    }
}

/// One byte of a chunked body; `None` when it is not valid chunking.
fn step_chunk(state: Chunk, byte: u8) -> Option<Framing> {
    Some(match state {
        Chunk::Size(mut line) => {
            if byte != b'\n' {
                if line.len() >= 1024 {
                    return None;
                }
                line.push(byte);
                return Some(Framing::Chunked(Chunk::Size(line)));
            }
            let text = std::str::from_utf8(&line).ok()?;
            let digits = text.split(';').next()?.trim();
            let size = u64::from_str_radix(digits, 16).ok()?;
            if size == 0 {
                Framing::Chunked(Chunk::Trailers(0))
            } else {
                Framing::Chunked(Chunk::Data(size))
            }
        }
        Chunk::DataEnd(left) if left > 1 => Framing::Chunked(Chunk::DataEnd(left - 1)),
        Chunk::DataEnd(_) => Framing::Chunked(Chunk::Size(Vec::new())),
        Chunk::Trailers(len) => match byte {
            b'\n' if len == 0 => Framing::Head,
            b'\n' => Framing::Chunked(Chunk::Trailers(0)),
            b'\r' => Framing::Chunked(Chunk::Trailers(len)),
            _ => Framing::Chunked(Chunk::Trailers(len + 1)),
        },
        Chunk::Data(_) => return None,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Writes `head` to `out`, stamped when it has no `X-Request-Id`, and
/// answers how its body is framed.
fn stamp(head: &[u8], out: &mut Vec<u8>) -> Framing {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut headers);
    let (Ok(httparse::Status::Complete(_)), Some(code)) = (parsed.parse(head), parsed.code) else {
        out.extend_from_slice(head);
        return Framing::Raw;
    };
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let framing = match code {
        101 => Framing::Raw,
        100..=199 | 204 | 304 => Framing::Head,
        _ if chunked => Framing::Chunked(Chunk::Size(Vec::new())),
        _ => match length {
            Some(0) => Framing::Head,
            Some(n) => Framing::Body(n),
            None => Framing::Raw,
        },
    };
    if code < 200 || header("x-request-id").is_some() {
        out.extend_from_slice(head);
        return framing;
    }
    let id = uuid::Uuid::new_v4().to_string();
    let bare_error = code >= 400 && !chunked && length.unwrap_or(0) == 0;
    let body_end = head.len() - 2;
    if !bare_error {
        out.extend_from_slice(&head[..body_end]);
        out.extend_from_slice(format!("x-request-id: {id}\r\n\r\n").as_bytes());
        return framing;
    }
    // A bare error of the HTTP layer: the SPEC's JSON error, with the id.
    let (error, detail) = describe(code);
    tracing::info!(request_id = %id, status = code, error, "answered before routing");
    let body =
        serde_json::json!({ "error": error, "detail": detail, "request_id": id }).to_string();
    let status_line_end = find(head, b"\r\n").unwrap_or(0) + 2;
    out.extend_from_slice(&head[..status_line_end]);
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length")
            || h.name.eq_ignore_ascii_case("content-type")
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\nx-request-id: {id}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    // The server wrote no body for it: the next bytes are the next head.
    Framing::Head
}

/// The error code and sentence of an answer the HTTP layer wrote alone.
fn describe(code: u16) -> (&'static str, &'static str) {
    match code {
        400 => ("bad_request", "the request is not valid HTTP/1.1"),
        408 => (
            "request_timeout",
            "the request head did not arrive in time; the connection is closed",
        ),
        413 => ("payload_too_large", "the request is too large"),
        431 => (
            "request_header_fields_too_large",
            "the request head is too large or has too many headers",
        ),
        500..=599 => (
            "internal_error",
            "Madre could not complete the request; it was logged with this request id",
        ),
        _ => ("bad_request", "the request was refused before routing"),
    }
}

/// A connection whose written answers pass through a [`Stamper`]; reads
/// pass through untouched.
pub struct Stamped<IO> {
    inner: IO,
    stamper: Stamper,
    /// Stamped bytes accepted from the server but not yet written.
    pending: Vec<u8>,
    written: usize,
}

impl<IO> Stamped<IO> {
    /// Wraps a new connection.
    pub fn new(inner: IO) -> Self {
        Self {
            inner,
            stamper: Stamper::default(),
            pending: Vec::new(),
            written: 0,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Stamped<IO> {
    /// Writes what is pending; ready once nothing is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Stamped<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Stamped<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        // Body bytes of a known length go straight through.
        let pass = this.stamper.passthrough().min(buf.len());
        if pass > 0 {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..pass]))?;
            this.stamper.passed(n);
            return Poll::Ready(Ok(n));
        }
        this.stamper.feed(buf, &mut this.pending);
        // Taken: what does not go out now goes at the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(writes: &[&[u8]]) -> String {
        let mut stamper = Stamper::default();
        let mut out = Vec::new();
        for w in writes {
            stamper.feed(w, &mut out);
        }
        String::from_utf8(out).unwrap()
    }

    fn ids(text: &str) -> usize {
        text.matches("x-request-id: ").count()
    }

    #[test]
    fn a_bare_error_becomes_the_json_error_with_an_id() {
        let out = run(&[b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n"]);
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(
            head.contains("connection: close") && head.contains("date: x"),
            "{out}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "request_header_fields_too_large");
        let id = json["request_id"].as_str().unwrap();
        assert!(head.contains(&format!("x-request-id: {id}")), "{out}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{out}"
        );
    }

    #[test]
    fn answers_with_an_id_pass_untouched_and_others_get_one() {
        let routed = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: r1\r\n\r\n{}";
        assert_eq!(run(&[routed.as_bytes()]), routed);
        let unstamped = run(&[b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]);
        assert!(
            unstamped.ends_with("\r\n\r\n{}") && ids(&unstamped) == 1,
            "{unstamped}"
        );
    }

    /// Bodies that look like heads are not touched: the framing is followed,
    /// across writes split anywhere.
    #[test]
    fn framing_is_followed_across_any_split() {
        let body = "HTTP/1.1 431 x\r\ncontent-length: 0\r\n\r\n";
        let chunked_body = "HTTP/1.1 400 y\r\n\r\n";
        let stream = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-request-id: a\r\n\r\n{body}\
             HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-request-id: b\r\n\r\n{:x}\r\n{chunked_body}\r\n0\r\n\r\n\
             HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 204 No Content\r\nx-request-id: c\r\n\r\n\
             HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n",
            body.len(),
            chunked_body.len()
        );
        let bytes = stream.as_bytes();
        let whole = run(&[bytes]);
        assert_eq!(ids(&whole), 4, "{whole}");
        assert!(
            whole.contains(body) && whole.contains(chunked_body),
            "{whole}"
        );
        assert!(whole.contains("\"request_timeout\""), "{whole}");
        for split in 1..bytes.len() {
            let (a, b) = bytes.split_at(split);
            let out = run(&[a, b]);
            assert_eq!(
                out.replace(char::is_alphanumeric, ""),
                whole.replace(char::is_alphanumeric, ""),
                "split at {split}"
            );
            assert_eq!(ids(&out), 4, "split at {split}");
        }
        let byte_by_byte: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(ids(&run(&byte_by_byte)), 4);
    }

    #[test]
    fn what_cannot_be_followed_passes_untouched() {
        let endless =
            "HTTP/1.0 200 OK\r\nx-request-id: a\r\n\r\nHTTP/1.1 431 x\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(run(&[endless.as_bytes()]), endless);
        let garbage = "not http\r\n\r\nHTTP/1.1 431 x\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(run(&[garbage.as_bytes()]), garbage);
        let huge = vec![b'a'; MAX_HEAD_BYTES + 10];
        assert_eq!(run(&[&huge]).len(), huge.len());
    }
}
