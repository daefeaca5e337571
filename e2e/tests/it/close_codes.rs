//! Close codes promised for client frames the server cannot take: 1009 for a frame over the
//! hard limit (16 × `WS_MAX_FRAME_BYTES`), 1007 for a text frame that is not UTF-8. Both are
//! sent as close frames and counted; other connections are unaffected.

use e2e::{Service, WAIT, WsClient, spawn_ws, ws_config};
use futures_util::{SinkExt, StreamExt};
use testkit::RedisServer;
use tokio::{net::TcpStream, time::timeout};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async,
    tungstenite::{
        Message,
        protocol::{
            CloseFrame,
            frame::{
                Frame,
                coding::{Data, OpCode},
            },
        },
    },
};

type Raw = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(ws: &Service) -> Raw {
    timeout(WAIT, connect_async(ws.ws_url())).await.expect("connect in time").expect("connect").0
}

/// Reads until the close frame; its code and reason.
async fn close_of(raw: &mut Raw) -> (u16, String) {
    let read = async {
        while let Some(msg) = raw.next().await {
            match msg.expect("the close frame arrives before the connection ends") {
                Message::Close(Some(CloseFrame { code, reason })) => return (u16::from(code), reason.to_string()),
                Message::Close(None) => panic!("a close frame without a code"),
                _ => {}
            }
        }
        panic!("the connection ended without a close frame")
    };
    timeout(WAIT, read).await.expect("the close frame arrives in time")
}

async fn publish_one(redis: &RedisServer, id: u64) {
    e2e::history::publish_frames(&redis.url(), [e2e::history::event_frame(id, 0)]).await;
}

#[tokio::test]
async fn a_frame_over_the_hard_limit_is_answered_with_close_1009() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.max_frame_bytes = 1024; // hard limit 16 KiB
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;
    let (mut bystander, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    let mut raw = connect(&ws).await;
    timeout(WAIT, raw.send(Message::Text("x".repeat(20_000).into()))).await.expect("sent in time").unwrap();
    let (code, reason) = close_of(&mut raw).await;
    assert_eq!(code, 1009, "{reason}");
    assert_eq!(reason, "frame of 20000 bytes exceeds the limit of 16384 bytes");
    assert_eq!(ws.metric("ws_closed_frame_too_large_total").await, 1);

    publish_one(&redis, 1).await;
    assert_eq!(bystander.next_json().await["id"], 1, "other connections are unaffected");
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_is_answered_with_close_1007() {
    let redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let (mut bystander, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    let mut raw = connect(&ws).await;
    // `{"` then bytes that are never UTF-8, in a text frame (tungstenite's Text type would refuse).
    let frame = Frame::message(vec![b'{', b'"', 0xff, 0xfe], OpCode::Data(Data::Text), true);
    timeout(WAIT, raw.send(Message::Frame(frame))).await.expect("sent in time").unwrap();
    let (code, reason) = close_of(&mut raw).await;
    assert_eq!(code, 1007, "{reason}");
    assert_eq!(reason, "text frame is not valid UTF-8");
    assert_eq!(ws.metric("ws_closed_invalid_utf8_total").await, 1);

    publish_one(&redis, 1).await;
    assert_eq!(bystander.next_json().await["id"], 1, "other connections are unaffected");
}
