//! A raw Server-Sent Events client for tests: plain HTTP/1.1 over a [`TcpStream`], no HTTP
//! client crate, so a test sees exactly what went over the wire (status line, headers, chunked
//! framing) and can stop reading to play a stuck client.
//!
//! - [`SseRequest`]: the `GET`, with any headers (`Last-Event-ID`, `Authorization`, `Origin`)
//!   and optionally a tiny receive buffer
//! - [`SseClient`]: the response's status and headers, then the stream as [`SseItem`]s, every
//!   read bounded ([`WAIT`] unless told otherwise)
//! - [`Parser`] and [`Chunked`]: the event-stream parser and the chunked-body decoder, which
//!   take bytes in pieces of any size (also for `curl -N`'s output)
//!
//! The parser follows the HTML standard's event-stream interpretation: lines end with CRLF, LF
//! or a lone CR (a CRLF split across two reads is one line end); `:` starts a comment; one
//! space after a field's colon is dropped; `data` lines join with `\n`; an `id` with a NUL is
//! ignored; a `retry` that is not all digits is ignored; unknown fields are ignored; a blank
//! line ends an event. Unlike a browser, it also yields a block that set only `retry` or `id`
//! (the server's first block is `retry: 1000` alone), and it keeps `id` per block instead of
//! carrying the last one forward, so a test sees which block set it.

use std::{collections::VecDeque, fmt, net::SocketAddr, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    time::{Instant, timeout_at},
};

use crate::WAIT;

/// One block of the stream: the fields it set, up to the blank line that ended it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` (the last one in the block).
    pub id: Option<String>,
    /// `event:`; `None` for an unnamed event (`EventSource.onmessage`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; `None` when the block had none.
    pub data: Option<String>,
    /// `retry:`, in milliseconds.
    pub retry: Option<u64>,
}

impl SseEvent {
    /// Whether this is a change: an unnamed event with data.
    pub fn is_change(&self) -> bool {
        self.event.is_none() && self.data.is_some()
    }

    /// Whether this is the named event `name`.
    pub fn is(&self, name: &str) -> bool {
        self.event.as_deref() == Some(name)
    }

    /// The data, parsed as JSON; panics when there is none or it is not JSON.
    pub fn json(&self) -> Value {
        let data = self.data.as_deref().unwrap_or_else(|| panic!("no data in {self}"));
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {self}"))
    }
}

impl fmt::Display for SseEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(retry) = self.retry {
            writeln!(f, "retry: {retry}")?;
        }
        if let Some(event) = &self.event {
            writeln!(f, "event: {event}")?;
        }
        if let Some(id) = &self.id {
            writeln!(f, "id: {id}")?;
        }
        if let Some(data) = &self.data {
            for line in data.split('\n') {
                writeln!(f, "data: {line}")?;
            }
        }
        Ok(())
    }
}

/// What the stream carries, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    /// A block of fields ended by a blank line.
    Event(SseEvent),
    /// A comment line (`: heartbeat` gives `"heartbeat"`), yielded as soon as its line ends.
    Comment(String),
}

/// The event-stream parser: feed it bytes as they come, take the items it completed.
#[derive(Debug, Default)]
pub struct Parser {
    line: Vec<u8>,
    /// The last byte fed was a CR: an LF right after it (maybe in the next piece) is the same
    /// line end.
    after_cr: bool,
    /// Nothing but a possible byte-order mark has been read yet.
    started: bool,
    block: SseEvent,
    /// Whether the current block set any field.
    fields: bool,
    /// `data:` lines in the current block (`data:` twice is `"\n"`, not `""`).
    data_lines: usize,
    items: VecDeque<SseItem>,
}

impl Parser {
    /// A parser at the start of a stream.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Parses `bytes`, which may end anywhere (mid-line, mid-CRLF, mid-character).
    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' => self.end_line(),
                b'\r' => {
                    self.end_line();
                    self.after_cr = true;
                }
                _ => self.line.push(byte),
            }
        }
    }

    /// The next completed item, if any.
    pub fn next_item(&mut self) -> Option<SseItem> {
        self.items.pop_front()
    }

    /// Whether a partial line or block is pending (the stream ended mid-event).
    pub fn is_mid_event(&self) -> bool {
        !self.line.is_empty() || self.fields
    }

    fn end_line(&mut self) {
        let mut line = std::mem::take(&mut self.line);
        if !self.started {
            self.started = true;
            if line.starts_with("\u{feff}".as_bytes()) {
                line.drain(..3);
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if line.is_empty() {
            self.data_lines = 0;
            if std::mem::take(&mut self.fields) {
                self.items.push_back(SseItem::Event(std::mem::take(&mut self.block)));
            }
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.items.push_back(SseItem::Comment(comment.strip_prefix(' ').unwrap_or(comment).to_owned()));
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_str(), ""),
        };
        match name {
            "event" => self.block.event = Some(value.to_owned()),
            "data" => {
                let data = self.block.data.get_or_insert_default();
                if self.data_lines > 0 {
                    data.push('\n');
                }
                data.push_str(value);
                self.data_lines += 1;
            }
            "id" if !value.contains('\0') => self.block.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                let Ok(ms) = value.parse() else { return };
                self.block.retry = Some(ms);
            }
            _ => return, // ignored, as the standard says
        }
        self.fields = true;
    }
}

/// The `Transfer-Encoding: chunked` decoder: feed it the body's bytes in pieces of any size.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line (hex, maybe `;extensions`).
    #[default]
    Size,
    /// This many bytes of chunk data are still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero-size) chunk: trailer lines up to a blank one.
    Trailers,
    /// The body is complete.
    Done,
}

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;

impl Chunked {
    /// A decoder at the start of a body.
    pub fn new() -> Chunked {
        Chunked::default()
    }

    /// Whether the last chunk and the trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes `input`, appending the body's bytes to `out`. Bytes after the end are ignored.
    ///
    /// # Errors
    /// The framing is not chunked encoding (the message says where).
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Done => return Ok(()),
                ChunkState::Data(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    let left = left - n as u64;
                    self.state = if left == 0 { ChunkState::DataEnd } else { ChunkState::Data(left) };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailers => {
                    let Some(end) = input.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(input);
                        self.check_line_length()?;
                        return Ok(());
                    };
                    self.line.extend_from_slice(&input[..end]);
                    input = &input[end + 1..];
                    self.check_line_length()?;
                    let mut line = std::mem::take(&mut self.line);
                    if line.pop_if(|b| *b == b'\r').is_none() {
                        return Err(format!("a chunk line ends with a bare LF: {:?}", String::from_utf8_lossy(&line)));
                    }
                    self.end_line(&line)?;
                }
            }
        }
        Ok(())
    }

    fn check_line_length(&self) -> Result<(), String> {
        if self.line.len() > MAX_LINE {
            return Err(format!("a chunk line longer than {MAX_LINE} bytes"));
        }
        Ok(())
    }

    fn end_line(&mut self, line: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(line);
        self.state = match self.state {
            ChunkState::Size => {
                let size = text.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16).map_err(|e| format!("chunk size {text:?}: {e}"))?;
                if size == 0 { ChunkState::Trailers } else { ChunkState::Data(size) }
            }
            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
            ChunkState::DataEnd => return Err(format!("chunk data runs past its size: {text:?}")),
            ChunkState::Trailers if line.is_empty() => ChunkState::Done,
            ChunkState::Trailers => ChunkState::Trailers,
            ChunkState::Data(_) | ChunkState::Done => unreachable!("not a line state"),
        };
        Ok(())
    }
}

/// How the response's body is delimited.
#[derive(Debug)]
enum Body {
    Chunked(Chunked),
    Length(u64),
    /// Until the server closes (HTTP/1.0, or neither header).
    Close,
}

/// A `GET` for an event stream; [`SseRequest::send`] sends it.
#[derive(Debug, Clone)]
pub struct SseRequest {
    addr: SocketAddr,
    path: String,
    headers: Vec<(String, String)>,
    recv_buffer: Option<u32>,
    version: &'static str,
}

impl SseRequest {
    /// `GET path` on `addr`, with `Host` and `Accept: text/event-stream`.
    pub fn new(addr: SocketAddr, path: &str) -> SseRequest {
        SseRequest { addr, path: path.to_owned(), headers: Vec::new(), recv_buffer: None, version: "HTTP/1.1" }
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> SseRequest {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `Last-Event-ID: id`, as an `EventSource` sends when it reconnects.
    pub fn last_event_id(self, id: &str) -> SseRequest {
        self.header("Last-Event-ID", id)
    }

    /// Sets the socket's receive buffer (`SO_RCVBUF`) before connecting, so a client that
    /// stops reading backs up quickly.
    pub fn recv_buffer(mut self, bytes: u32) -> SseRequest {
        self.recv_buffer = Some(bytes);
        self
    }

    /// Asks with HTTP/1.0: the body then comes unchunked and ends when the server closes.
    pub fn http10(mut self) -> SseRequest {
        self.version = "HTTP/1.0";
        self
    }

    /// Connects, sends the request and reads the response's head, within [`WAIT`].
    pub async fn send(self) -> SseClient {
        let deadline = Instant::now() + WAIT;
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(bytes) = self.recv_buffer {
            socket.set_recv_buffer_size(bytes).expect("set SO_RCVBUF");
        }
        let mut stream = timeout_at(deadline, socket.connect(self.addr))
            .await
            .unwrap_or_else(|_| panic!("connect to {} within {WAIT:?}", self.addr))
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.addr));
        let mut request =
            format!("GET {} {}\r\nHost: {}\r\nAccept: text/event-stream\r\n", self.path, self.version, self.addr);
        for (name, value) in &self.headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        timeout_at(deadline, stream.write_all(request.as_bytes()))
            .await
            .expect("request sent in time")
            .expect("send the request");

        let mut head = Vec::new();
        let mut buf = [0_u8; 4096];
        let end = loop {
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            assert!(head.len() < 64 * 1024, "a response head over 64 KiB: {}", String::from_utf8_lossy(&head));
            let n = timeout_at(deadline, stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no response head within {WAIT:?}: {:?}", String::from_utf8_lossy(&head)))
                .expect("read the response");
            assert_ne!(n, 0, "the connection ended before the response head: {:?}", String::from_utf8_lossy(&head));
            head.extend_from_slice(&buf[..n]);
        };
        let rest = head.split_off(end + 4);
        let head = String::from_utf8(head[..end].to_vec()).expect("the response head is text");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default().to_owned();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        assert!(version.starts_with("HTTP/1."), "not an HTTP/1 response: {status_line:?}");
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) =
                    line.split_once(':').unwrap_or_else(|| panic!("a header without a colon: {line:?}"));
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let body = if find("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked")) {
            Body::Chunked(Chunked::new())
        } else if let Some(length) = find("content-length") {
            Body::Length(length.parse().unwrap_or_else(|e| panic!("content-length {length:?}: {e}")))
        } else {
            Body::Close
        };
        let mut client = SseClient {
            status,
            status_line,
            headers,
            stream,
            body,
            parser: Parser::new(),
            ended: false,
            truncated: false,
            raw: (status != 200).then(Vec::new),
        };
        client.take(&rest);
        client
    }
}

/// What [`SseClient::next_within`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The next item of the stream.
    Item(SseItem),
    /// The body ended (last chunk, or the server closed) with no further item.
    Ended,
    /// Nothing within the time given.
    TimedOut,
}

/// An open response: its status and headers, then the event stream, read only when asked.
#[derive(Debug)]
pub struct SseClient {
    /// The HTTP status code.
    pub status: u16,
    /// The whole status line (`HTTP/1.1 200 OK`).
    pub status_line: String,
    /// The response headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    stream: TcpStream,
    body: Body,
    parser: Parser,
    ended: bool,
    /// The connection ended before the body's end (a chunked body without its last chunk).
    truncated: bool,
    /// The decoded body so far, for [`SseClient::body_text`]; kept only for a refusal (not
    /// 200), so a long stream does not pile up here.
    raw: Option<Vec<u8>>,
}

impl SseClient {
    /// `GET path` on `addr` with no extra headers.
    pub async fn get(addr: SocketAddr, path: &str) -> SseClient {
        SseRequest::new(addr, path).send().await
    }

    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub fn is_chunked(&self) -> bool {
        matches!(self.body, Body::Chunked(_))
    }

    /// Whether the body ended, and ended properly (its last chunk, or all its length, arrived).
    pub fn ended_cleanly(&self) -> bool {
        self.ended && !self.truncated
    }

    /// Body bytes as they arrive: decoded, then parsed.
    fn take(&mut self, bytes: &[u8]) {
        let mut decoded = Vec::new();
        match &mut self.body {
            Body::Chunked(chunked) => {
                chunked.feed(bytes, &mut decoded).unwrap_or_else(|e| panic!("bad chunked encoding: {e}"));
                if chunked.is_done() {
                    self.ended = true;
                }
            }
            Body::Length(left) => {
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(bytes.len());
                decoded.extend_from_slice(&bytes[..n]);
                *left -= n as u64;
                if *left == 0 {
                    self.ended = true;
                }
            }
            Body::Close => decoded.extend_from_slice(bytes),
        }
        self.parser.feed(&decoded);
        if let Some(raw) = &mut self.raw {
            raw.extend_from_slice(&decoded);
        }
    }

    /// Reads once from the socket; `false` on a timeout.
    async fn fill(&mut self, deadline: Instant) -> bool {
        let mut buf = vec![0_u8; 64 * 1024];
        match timeout_at(deadline, self.stream.read(&mut buf)).await {
            Err(_) => false,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.ended = true;
                self.truncated = true;
                true
            }
            Ok(Err(e)) => panic!("read the event stream: {e}"),
            Ok(Ok(0)) => {
                self.ended = true;
                self.truncated = match &self.body {
                    Body::Chunked(chunked) => !chunked.is_done(),
                    Body::Length(left) => *left > 0,
                    Body::Close => false,
                };
                true
            }
            Ok(Ok(n)) => {
                self.take(&buf[..n]);
                true
            }
        }
    }

    /// The next item within `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Next {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(item) = self.parser.next_item() {
                return Next::Item(item);
            }
            if self.ended {
                return Next::Ended;
            }
            if !self.fill(deadline).await {
                return Next::TimedOut;
            }
        }
    }

    /// The next item; panics when the stream ends or nothing comes within [`WAIT`].
    pub async fn next_item(&mut self) -> SseItem {
        match self.next_within(WAIT).await {
            Next::Item(item) => item,
            Next::Ended => panic!("the event stream ended (cleanly: {})", self.ended_cleanly()),
            Next::TimedOut => panic!("nothing on the event stream within {WAIT:?} (buffered by a proxy?)"),
        }
    }

    /// The next event, skipping comments; panics as [`Self::next_item`].
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            if let SseItem::Event(event) = self.next_item().await {
                return event;
            }
        }
    }

    /// The next event, which must be a change (an unnamed event with data); comments are
    /// skipped.
    pub async fn next_change(&mut self) -> SseEvent {
        let event = self.next_event().await;
        assert!(event.is_change(), "expected a change, got:\n{event}");
        event
    }

    /// The next `n` changes, as their data; comments are skipped, anything else panics.
    pub async fn changes(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(self.next_change().await.json());
        }
        out
    }

    /// Events up to and including the first named `name`; comments are skipped.
    pub async fn events_until(&mut self, name: &str) -> Vec<SseEvent> {
        let mut out = Vec::new();
        loop {
            let event = self.next_event().await;
            let done = event.is(name);
            out.push(event);
            if done {
                return out;
            }
        }
    }

    /// Every item until the body ends; panics if it does not end within `limit`.
    pub async fn read_to_end(&mut self, limit: Duration) -> Vec<SseItem> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            match self.next_within(deadline.saturating_duration_since(Instant::now())).await {
                Next::Item(item) => out.push(item),
                Next::Ended => return out,
                Next::TimedOut => panic!("the stream did not end within {limit:?}; it sent {out:?}"),
            }
        }
    }

    /// The whole body of a refusal (any status but 200) as text, within [`WAIT`].
    pub async fn body_text(mut self) -> String {
        assert_ne!(self.status, 200, "body_text is for refusals; read a stream with next_item");
        let deadline = Instant::now() + WAIT;
        while !self.ended {
            assert!(self.fill(deadline).await, "the body did not end within {WAIT:?}");
        }
        String::from_utf8_lossy(self.raw.as_deref().unwrap_or_default()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the ws-server writes (docs/protocol.md), with every kind of block.
    const STREAM: &str = "retry: 1000\n\nevent: hello\nid: k3:7\ndata: {\"type\":\"hello\"}\n\n: heartbeat\n\nid: k3:8\ndata: {\"type\":\"event\",\"pos\":8,\"name\":\"Zoë\"}\n\nevent: close\ndata: {\"code\":1001}\n\n";

    fn expected() -> Vec<SseItem> {
        let event = |id: Option<&str>, event: Option<&str>, data: Option<&str>, retry| {
            SseItem::Event(SseEvent {
                id: id.map(str::to_owned),
                event: event.map(str::to_owned),
                data: data.map(str::to_owned),
                retry,
            })
        };
        vec![
            event(None, None, None, Some(1000)),
            event(Some("k3:7"), Some("hello"), Some(r#"{"type":"hello"}"#), None),
            SseItem::Comment("heartbeat".into()),
            event(Some("k3:8"), None, Some(r#"{"type":"event","pos":8,"name":"Zoë"}"#), None),
            event(None, Some("close"), Some(r#"{"code":1001}"#), None),
        ]
    }

    fn parse(pieces: &[&[u8]]) -> Vec<SseItem> {
        let mut parser = Parser::new();
        let mut out = Vec::new();
        for piece in pieces {
            parser.feed(piece);
            out.extend(std::iter::from_fn(|| parser.next_item()));
        }
        assert!(!parser.is_mid_event(), "nothing left over");
        out
    }

    fn one_event(text: &str) -> SseEvent {
        match parse(&[text.as_bytes()]).as_slice() {
            [SseItem::Event(event)] => event.clone(),
            other => panic!("expected one event from {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn the_servers_stream_parses_whatever_the_split_even_inside_a_character() {
        let bytes = STREAM.as_bytes();
        assert_eq!(parse(&[bytes]), expected());
        for at in 0..=bytes.len() {
            assert_eq!(parse(&[&bytes[..at], &bytes[at..]]), expected(), "split at {at}");
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(parse(&singles), expected(), "byte by byte (the ë is two bytes)");
    }

    #[test]
    fn crlf_lf_and_a_lone_cr_end_lines_alike_even_when_a_crlf_is_split() {
        for ending in ["\r\n", "\r"] {
            let text = STREAM.replace('\n', ending);
            let bytes = text.as_bytes();
            for at in 0..=bytes.len() {
                assert_eq!(parse(&[&bytes[..at], &bytes[at..]]), expected(), "{ending:?}, split at {at}");
            }
        }
        // A CRLF is one line end, not a line end and a blank line: this is one block.
        assert_eq!(parse(&[b"data: a\r", b"\ndata: b\r\n\r\n"]), [SseItem::Event(one_event("data: a\ndata: b\n\n"))]);
        // Mixed endings in one stream.
        assert_eq!(one_event("id: 1\r\ndata: x\rdata: y\n\r\n").data.as_deref(), Some("x\ny"));
    }

    #[test]
    fn comments_are_items_of_their_own_and_do_not_end_a_block() {
        let items = parse(&[b": heartbeat\n:\n:no space\n:  two spaces\n\n"]);
        let comments = ["heartbeat", "", "no space", " two spaces"].map(|c| SseItem::Comment(c.into()));
        assert_eq!(items, comments, "a block of only comments is no event");
        let items = parse(&[b"id: 5\n: in between\ndata: d\n\n"]);
        assert_eq!(items[0], SseItem::Comment("in between".into()));
        assert_eq!(items[1], SseItem::Event(one_event("id: 5\ndata: d\n\n")));
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn fields_follow_the_standards_rules() {
        assert_eq!(one_event("data:x\n\n").data.as_deref(), Some("x"), "no space after the colon");
        assert_eq!(one_event("data:  x\n\n").data.as_deref(), Some(" x"), "only one space is dropped");
        assert_eq!(one_event("data\n\n").data.as_deref(), Some(""), "a field without a colon has an empty value");
        assert_eq!(one_event("data:\ndata:\n\n").data.as_deref(), Some("\n"), "two empty data lines");
        assert_eq!(one_event("data: a:b: c\n\n").data.as_deref(), Some("a:b: c"), "only the first colon splits");
        assert_eq!(one_event("retry: 12x\ndata: d\n\n").retry, None, "a retry that is not digits is ignored");
        assert_eq!(one_event("retry: 250\n\n").retry, Some(250));
        assert_eq!(one_event("id: a\0b\ndata: d\n\n").id, None, "an id with NUL is ignored");
        assert_eq!(one_event("id: 1\nid: 2\ndata: d\n\n").id.as_deref(), Some("2"));
        assert_eq!(one_event("id\ndata: d\n\n").id.as_deref(), Some(""), "an empty id (it resets Last-Event-ID)");
        let event = one_event("\u{feff}Data: no\nfoo: bar\nevent: e\ndata: d\n\n");
        assert_eq!((event.event.as_deref(), event.data.as_deref()), (Some("e"), Some("d")), "BOM and unknown fields");
        assert!(parse(&[b"foo: bar\n\n"]).is_empty(), "a block of unknown fields is nothing");
    }

    #[test]
    fn an_unfinished_event_is_held_back() {
        let mut parser = Parser::new();
        parser.feed(b"id: 1\ndata: half");
        assert_eq!(parser.next_item(), None);
        assert!(parser.is_mid_event());
        parser.feed(b"\n");
        assert_eq!(parser.next_item(), None, "no blank line yet");
        parser.feed(b"\n");
        assert_eq!(parser.next_item(), Some(SseItem::Event(one_event("id: 1\ndata: half\n\n"))));
    }

    /// `body` as chunked encoding, cut into chunks at `cuts`, with an extension and a trailer
    /// thrown in.
    fn chunked(body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut from = 0;
        for (i, &to) in cuts.iter().chain([&body.len()]).enumerate() {
            if to <= from {
                continue;
            }
            let ext = if i % 2 == 1 { ";name=value" } else { "" };
            out.extend_from_slice(format!("{:X}{ext}\r\n", to - from).as_bytes());
            out.extend_from_slice(&body[from..to]);
            out.extend_from_slice(b"\r\n");
            from = to;
        }
        out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
        out
    }

    fn dechunk(pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut decoder = Chunked::new();
        let mut out = Vec::new();
        for piece in pieces {
            decoder.feed(piece, &mut out).unwrap();
        }
        (out, decoder.is_done())
    }

    #[test]
    fn chunk_boundaries_mid_line_and_reads_split_anywhere_give_the_same_events() {
        let body = STREAM.as_bytes();
        // Chunks cut mid-field, between the two LFs of a blank line, inside the two bytes of "ë",
        // and chunks of one byte.
        let e_umlaut = body.windows(2).position(|w| w == "ë".as_bytes()).unwrap();
        let cuts = vec![3, 4, 12, 13, 30, 31, 59, 60, e_umlaut + 1, e_umlaut + 2, e_umlaut + 3, body.len() - 1];
        let wire = chunked(body, &cuts);
        for at in 0..=wire.len() {
            let (decoded, done) = dechunk(&[&wire[..at], &wire[at..]]);
            assert!(done, "the last chunk and trailers were read (split at {at})");
            assert_eq!(decoded, body, "split at {at}");
            assert_eq!(parse(&[&decoded]), expected());
        }
        let singles: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(dechunk(&singles), (body.to_vec(), true));
        let (partial, done) = dechunk(&[&wire[..wire.len() - 3]]);
        assert!(!done && partial == body, "without the end of the trailers the body is not done");
    }

    #[test]
    fn broken_chunked_framing_is_refused() {
        let mut out = Vec::new();
        assert!(Chunked::new().feed(b"zz\r\n", &mut out).unwrap_err().contains("chunk size"));
        assert!(Chunked::new().feed(b"2\r\nabc\r\n", &mut out).unwrap_err().contains("past its size"));
        assert!(Chunked::new().feed(b"2\nab", &mut out).unwrap_err().contains("bare LF"));
        let mut decoder = Chunked::new();
        decoder.feed(b"0\r\n\r\nleftover", &mut out).unwrap();
        assert!(decoder.is_done());
    }

    /// A canned response over a real socket: head, then a chunked body written in pieces that
    /// cut lines, with pauses, then the last chunk.
    #[tokio::test]
    async fn the_client_reads_a_chunked_stream_from_a_socket_and_sees_its_end() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0_u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert_ne!(n, 0);
                request.extend_from_slice(&buf[..n]);
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            let wire = chunked(STREAM.as_bytes(), &[5, 40, 41, 77]);
            stream.write_all(head.as_bytes()).await.unwrap();
            for piece in wire.chunks(9) {
                stream.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            String::from_utf8(request).unwrap()
        });
        let mut client = SseRequest::new(addr, "/events?x=1").last_event_id("k3:6").send().await;
        assert_eq!((client.status, client.header("Content-Type")), (200, Some("text/event-stream")));
        assert!(client.is_chunked());
        let items = client.read_to_end(WAIT).await;
        assert_eq!(items, expected());
        assert!(client.ended_cleanly());
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /events?x=1 HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nLast-Event-ID: k3:6\r\n"), "{request}");
    }
}
