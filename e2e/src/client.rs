//! Clients: WebSocket with bounded waits, and a minimal HTTP GET.

use std::{net::SocketAddr, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{
    net::{TcpSocket, TcpStream},
    time::timeout,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, client_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue, protocol::CloseFrame},
};

use crate::WAIT;

/// A WebSocket client for tests.
#[derive(Debug)]
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects without a protocol (like a client of the original design).
    pub async fn connect(url: &str) -> WsClient {
        Self::open(url, false, None).await
    }

    /// Connects offering `orders.v1`; returns the client and its `hello` frame.
    pub async fn connect_protocol(url: &str) -> (WsClient, Value) {
        let mut client = Self::open(url, true, None).await;
        let hello = client.next_json().await;
        assert_eq!(hello["type"], "hello", "first frame is hello: {hello}");
        (client, hello)
    }

    /// Connects offering `orders.v1` with a tiny receive buffer, so a client that stops
    /// reading backs up quickly.
    pub async fn connect_small_buffer(url: &str) -> WsClient {
        Self::open(url, true, Some(4096)).await
    }

    /// Connects without a protocol, resuming with a `Last-Event-ID` header (the SSE way).
    pub async fn connect_with_last_event_id(url: &str, last_event_id: &str) -> WsClient {
        Self::open_with(url, false, None, &[("Last-Event-ID", last_event_id)]).await
    }

    /// Connects with extra request headers (`Authorization`, `Origin`, …); with `protocol`,
    /// offering `orders.v1`, and then returns its `hello` frame too.
    pub async fn connect_with_headers(
        url: &str,
        protocol: bool,
        headers: &[(&str, &str)],
    ) -> (WsClient, Option<Value>) {
        let mut client = Self::open_with(url, protocol, None, headers).await;
        let hello = match protocol {
            true => Some(client.next_json().await),
            false => None,
        };
        if let Some(hello) = &hello {
            assert_eq!(hello["type"], "hello", "first frame is hello: {hello}");
        }
        (client, hello)
    }

    async fn open(url: &str, protocol: bool, recv_buffer: Option<u32>) -> WsClient {
        Self::open_with(url, protocol, recv_buffer, &[]).await
    }

    async fn open_with(url: &str, protocol: bool, recv_buffer: Option<u32>, headers: &[(&str, &str)]) -> WsClient {
        let mut request = url.into_client_request().expect("valid ws url");
        for (name, value) in headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).expect("a header name");
            request.headers_mut().append(name, HeaderValue::from_str(value).expect("a header value"));
        }
        if protocol {
            request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("orders.v1"));
        }
        let host = request.uri().authority().expect("url has host").to_string();
        let addr: SocketAddr = tokio::net::lookup_host(&host).await.expect("resolve").next().expect("an address");
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("set SO_RCVBUF");
        }
        let stream = timeout(WAIT, socket.connect(addr)).await.expect("connect in time").expect("connect");
        let (ws, response) = timeout(WAIT, client_async(request, MaybeTlsStream::Plain(stream)))
            .await
            .expect("handshake in time")
            .expect("handshake");
        if protocol {
            assert_eq!(
                response.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap()),
                Some("orders.v1")
            );
        }
        WsClient { ws }
    }

    /// The next text frame, parsed; panics on close or after [`WAIT`].
    pub async fn next_json(&mut self) -> Value {
        self.next_json_within(WAIT).await.unwrap_or_else(|| panic!("no frame within {WAIT:?}"))
    }

    /// The next text frame within `limit`, or `None` if none came.
    pub async fn next_json_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => panic!("connection ended"),
                Ok(Some(Err(e))) => panic!("connection failed: {e}"),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => return Some(serde_json::from_str(&t).expect("frames are JSON")),
                Message::Close(frame) => panic!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// The next `n` event frames, skipping other frame types.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let frame = self.next_json().await;
            if frame["type"] == "event" {
                out.push(frame);
            }
        }
        out
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("send");
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Frames up to and including the first of type `kind`; panics on close or after [`WAIT`].
    pub async fn frames_until(&mut self, kind: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let frame = self.next_json().await;
            let done = frame["type"] == kind;
            out.push(frame);
            if done {
                return out;
            }
        }
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::Binary(data.into())).await.expect("send");
    }

    /// Reads until the server closes; returns the close code and reason. Frames before the
    /// close are skipped.
    pub async fn expect_close(&mut self, limit: Duration) -> (u16, String) {
        let read = async {
            while let Some(msg) = self.ws.next().await {
                match msg {
                    Ok(Message::Close(Some(CloseFrame { code, reason }))) => {
                        return (u16::from(code), reason.to_string());
                    }
                    Ok(Message::Close(None)) => return (1005, String::new()),
                    Ok(_) => continue,
                    Err(e) => panic!("connection failed before a close frame: {e}"),
                }
            }
            panic!("connection ended without a close frame")
        };
        timeout(limit, read).await.unwrap_or_else(|_| panic!("no close within {limit:?}"))
    }
}
