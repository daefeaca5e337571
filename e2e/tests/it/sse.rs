//! Server-Sent Events at `GET /events` (docs/protocol.md, "Server-Sent Events"): the same
//! connection as a WebSocket one, written as an event stream. Read with a raw HTTP/1.1 client
//! (`e2e::sse`), so the headers, the chunked framing and every block are what is checked.

use std::time::Duration;

use e2e::{SseClient, SseEvent, SseItem, SseRequest, System, WAIT, WsClient, spawn_ws, sse::Next, ws_config};
use serde_json::{Value, json};
use testkit::{RedisServer, wait_until};

/// `"EPOCH:POS"` of an event frame.
fn id_of(frame: &Value) -> String {
    format!("{}:{}", frame["epoch"].as_str().unwrap_or_else(|| panic!("no epoch in {frame}")), frame["pos"])
}

fn pos_of(id: &str) -> u64 {
    id.rsplit_once(':').and_then(|(_, pos)| pos.parse().ok()).unwrap_or_else(|| panic!("not EPOCH:POS: {id:?}"))
}

fn positions(changes: &[Value]) -> Vec<u64> {
    changes.iter().map(|c| c["pos"].as_u64().unwrap_or_else(|| panic!("no pos in {c}"))).collect()
}

fn names(changes: &[Value]) -> Vec<&str> {
    changes.iter().map(|c| c["order"]["customer_name"].as_str().unwrap_or("?")).collect()
}

async fn insert(system: &System, names: &[&str]) {
    let values: Vec<String> = names.iter().map(|n| format!("('{n}', 'p')")).collect();
    system.sql(&format!("INSERT INTO orders (customer_name, product_name) VALUES {}", values.join(", "))).await;
}

/// Opens `request`, checks it is a 200 event stream, and reads the opening: the `retry:` hint
/// alone, then `event: hello`. Returns the stream and the hello block.
async fn open(request: SseRequest) -> (SseClient, SseEvent) {
    let mut sse = request.send().await;
    assert_eq!(sse.status, 200, "{}", sse.status_line);
    let first = sse.next_item().await;
    assert_eq!(
        first,
        SseItem::Event(SseEvent { retry: Some(1000), ..SseEvent::default() }),
        "the stream opens with a retry hint alone"
    );
    let hello = sse.next_event().await;
    assert!(hello.is("hello"), "then hello:\n{hello}");
    assert_eq!(hello.json()["type"], "hello");
    (sse, hello)
}

/// What comes within `limit`, comments left out; the stream must stay open.
async fn events_within(sse: &mut SseClient, limit: Duration) -> Vec<SseEvent> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        match sse.next_within(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Next::Item(SseItem::Event(event)) => out.push(event),
            Next::Item(SseItem::Comment(_)) => {}
            Next::Ended => panic!("the stream ended; it sent {out:?}"),
            Next::TimedOut => return out,
        }
    }
}

#[tokio::test]
async fn events_stream_has_its_headers_a_retry_hint_hello_and_each_change_as_the_websocket_frame() {
    let system = System::start(1).await;
    let ws = &system.ws[0];
    // One change first, so the replica has a position for hello to announce.
    let mut plain = WsClient::connect(&ws.ws_url()).await;
    insert(&system, &["Before"]).await;
    let before = plain.events(1).await.remove(0);

    let (mut sse, hello) = open(SseRequest::new(ws.addr, "/events")).await;
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("x-accel-buffering"), Some("no"));
    assert!(sse.is_chunked(), "hyper chunks the body: {:?}", sse.headers);
    assert_eq!(hello.id.as_deref(), Some(id_of(&before).as_str()), "hello's id is the position it announces");
    let data = hello.json();
    assert_eq!(data["position"], json!({"epoch": before["epoch"], "pos": before["pos"]}), "{data}");
    assert_eq!(data["server_id"], format!("ws-{}", ws.addr.port()));

    // Every kind of change, and one larger than NOTIFY's 8000 bytes (it spans many chunks).
    system.sql("INSERT INTO orders (customer_name, product_name, amount) VALUES ('Ada', 'Lamp', 25.50)").await;
    system.sql("UPDATE orders SET status = 'shipped' WHERE customer_name = 'Ada'").await;
    system.sql("UPDATE orders SET product_name = repeat('x', 20000) WHERE customer_name = 'Before'").await;
    system.sql("DELETE FROM orders WHERE customer_name = 'Ada'").await;
    let from_ws = plain.events(4).await;
    let after_before = before["pos"].as_u64().unwrap() + 1;
    for (pos, frame) in (after_before..).zip(&from_ws) {
        let change = sse.next_change().await;
        assert_eq!(change.id.as_deref(), Some(id_of(frame).as_str()), "id is EPOCH:POS");
        assert_eq!(change.json(), *frame, "data is the WebSocket frame");
        assert!(!change.data.as_ref().unwrap().contains('\n'), "one data line");
        assert_eq!(frame["pos"].as_u64(), Some(pos), "consecutive");
    }
    let ops: Vec<&str> = from_ws.iter().map(|f| f["operation"].as_str().unwrap()).collect();
    assert_eq!(ops, ["INSERT", "UPDATE", "UPDATE", "DELETE"]);
    assert_eq!(from_ws[2]["order"]["product_name"].as_str().map(str::len), Some(20000), "the large row whole");
    assert_eq!(ws.metric("ws_open_sse_streams").await, 1);
    drop(sse);
    wait_until(WAIT, "the stream's connection is gone", || async { ws.metric("ws_open_sse_streams").await == 0 }).await;
}

#[tokio::test]
async fn hello_carries_no_id_before_the_replica_has_a_position() {
    let redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let (_sse, hello) = open(SseRequest::new(ws.addr, "/events")).await;
    assert_eq!(hello.id, None, "nothing to resume from yet:\n{hello}");
    assert!(hello.json().get("position").is_none_or(Value::is_null), "{hello}");
}

#[tokio::test]
async fn heartbeat_comments_keep_an_idle_stream_open_though_it_never_answers() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.heartbeat_interval = Duration::from_millis(300);
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;
    let (mut sse, _) = open(SseRequest::new(ws.addr, "/events")).await;

    // Eight intervals: a WebSocket client that never answered would have been closed (4009)
    // after two.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2400);
    let mut heartbeats = 0;
    loop {
        match sse.next_within(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            Next::Item(SseItem::Comment(text)) => {
                assert_eq!(text, "heartbeat");
                heartbeats += 1;
            }
            Next::Item(SseItem::Event(event)) => panic!("an idle stream sent an event:\n{event}"),
            Next::Ended => panic!("the stream ended after {heartbeats} heartbeats"),
            Next::TimedOut => break,
        }
    }
    assert!((4..=10).contains(&heartbeats), "a heartbeat every 300 ms for 2.4 s: {heartbeats}");
    assert_eq!(ws.metric("ws_heartbeat_timeouts_total").await, 0);

    e2e::history::publish_frames(&redis.url(), [e2e::history::event_frame(1, 0)]).await;
    let change = sse.next_change().await;
    assert_eq!((change.id.as_deref(), change.json()["id"].as_u64()), (Some("test:1"), Some(1)), "still live");
    assert_eq!(ws.metric("ws_open_sse_streams").await, 1);
}

#[tokio::test]
async fn last_event_id_resumes_on_another_replica_with_exactly_the_missed_events_then_live_ones() {
    let system = System::start(2).await;
    let (a, b) = (&system.ws[0], &system.ws[1]);
    let (mut on_a, _) = open(SseRequest::new(a.addr, "/events")).await;
    insert(&system, &["a1", "a2", "a3"]).await;
    let seen = on_a.changes(3).await;
    assert_eq!(names(&seen), ["a1", "a2", "a3"]);
    let first = seen[0]["pos"].as_u64().unwrap();
    assert_eq!(positions(&seen), [first, first + 1, first + 2]);
    let last_id = id_of(&seen[2]);
    drop(on_a);

    insert(&system, &["m1", "m2", "m3"]).await; // while the client is away
    wait_until(WAIT, "replica B saw the missed events", || async { b.metric("ws_messages_in_total").await == 6 }).await;
    let (mut on_b, hello) = open(SseRequest::new(b.addr, "/events").last_event_id(&last_id)).await;
    let events = on_b.events_until("subscribed").await;
    let (missed, subscribed) = events.split_at(events.len() - 1);
    assert!(missed.iter().all(SseEvent::is_change), "only changes before subscribed: {missed:?}");
    let missed: Vec<Value> = missed.iter().map(SseEvent::json).collect();
    assert_eq!(names(&missed), ["m1", "m2", "m3"], "exactly the missed events");
    assert_eq!(positions(&missed), [first + 3, first + 4, first + 5]);
    let subscribed = &subscribed[0];
    assert_eq!(subscribed.id.as_deref(), Some(id_of(&missed[2]).as_str()), "subscribed names the stream's place");
    // Whatever id the hello set must be a place to resume from: it is not past the events
    // the replay is about to send.
    if let Some(id) = &hello.id {
        assert!(pos_of(id) <= pos_of(&last_id), "hello's id {id} skips events after {last_id}");
    }

    insert(&system, &["l1", "l2"]).await;
    let live = on_b.changes(2).await;
    assert_eq!(names(&live), ["l1", "l2"]);
    assert_eq!(positions(&live), [first + 6, first + 7], "then live ones, consecutive");
    assert!(events_within(&mut on_b, Duration::from_millis(300)).await.is_empty(), "nothing twice");
}

/// An `EventSource` keeps the id of every block it receives and sends the last one when it
/// reconnects. Whatever the stream is cut after, that must lose nothing.
#[tokio::test]
async fn a_resume_cut_right_after_hello_loses_nothing_when_resumed_from_the_last_id_seen() {
    let system = System::start(2).await;
    let (a, b) = (&system.ws[0], &system.ws[1]);
    let mut plain = WsClient::connect(&b.ws_url()).await;
    insert(&system, &["a1"]).await;
    let seen = plain.events(1).await.remove(0);
    insert(&system, &["m1", "m2"]).await; // missed by a client that has a1
    plain.events(2).await;

    // The client resumes from a1 on B, and the connection is cut after the hello.
    let (cut, hello) = open(SseRequest::new(b.addr, "/events").last_event_id(&id_of(&seen))).await;
    drop(cut);
    let last_event_id = hello.id.unwrap_or_else(|| id_of(&seen));
    let (mut again, _) = open(SseRequest::new(a.addr, "/events").last_event_id(&last_event_id)).await;
    let events = again.events_until("subscribed").await;
    let changes: Vec<Value> = events.iter().filter(|e| e.is_change()).map(SseEvent::json).collect();
    assert_eq!(
        names(&changes),
        ["m1", "m2"],
        "resumed from {last_event_id} (the hello of a resume from {}): {events:?}",
        id_of(&seen)
    );
}

#[tokio::test]
async fn a_durable_consumer_with_ack_auto_resumes_on_another_replica_without_last_event_id() {
    let system = System::start(2).await;
    let (a, b) = (&system.ws[0], &system.ws[1]);
    let path = "/events?consumer=billing&ack=auto";
    let (mut on_a, _) = open(SseRequest::new(a.addr, path)).await;
    insert(&system, &["a1", "a2"]).await;
    assert_eq!(names(&on_a.changes(2).await), ["a1", "a2"]);
    drop(on_a);
    // Every event delivered counts as acknowledged, stored when the connection ends.
    wait_until(WAIT, "replica A stored the consumer's position", || async {
        a.metric("ws_consumer_acks_total").await >= 1
    })
    .await;
    insert(&system, &["m1", "m2"]).await;
    // In the log before B is asked, so they come as the replay (not as live events after it).
    wait_until(WAIT, "replica B saw the missed events", || async { b.metric("ws_messages_in_total").await == 4 }).await;

    // An EventSource reconnecting to the same URL: no Last-Event-ID needed, and the hello of a
    // stream that replays sets no id that would skip the replay.
    let (mut on_b, hello) = open(SseRequest::new(b.addr, path)).await;
    assert_eq!(hello.id, None, "{hello}");
    let events = on_b.events_until("subscribed").await;
    let changes: Vec<Value> = events.iter().filter(|e| e.is_change()).map(SseEvent::json).collect();
    assert_eq!(names(&changes), ["m1", "m2"], "after the consumer's last ack: {events:?}");
    insert(&system, &["l1"]).await;
    assert_eq!(names(&on_b.changes(1).await), ["l1"]);
}

#[tokio::test]
async fn a_last_event_id_beyond_retention_or_of_an_unknown_epoch_gets_an_explicit_reset() {
    let system = System::start(1).await;
    let ws = &system.ws[0];
    let mut plain = WsClient::connect(&ws.ws_url()).await;
    system
        .sql("INSERT INTO orders (customer_name, product_name) SELECT 'c' || n, 'p' FROM generate_series(1, 10) n")
        .await;
    let seen = plain.events(10).await;
    let epoch = seen[0]["epoch"].as_str().unwrap().to_owned();
    let newest = seen[9]["pos"].as_u64().unwrap();
    // Keep only the newest 3 entries, exactly: positions up to newest - 3 are gone.
    let client = redis::Client::open(system.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let kept: i64 = redis::cmd("XLEN").arg("{orders_updates}:log").query_async(&mut conn).await.unwrap();
    assert!(kept >= 10, "the log holds the ten events first ({kept})");
    let _: i64 =
        redis::cmd("XTRIM").arg("{orders_updates}:log").arg("MAXLEN").arg(3).query_async(&mut conn).await.unwrap();

    let cases = [
        (format!("{epoch}:{}", seen[0]["pos"]), "beyond_retention"),
        (format!("nosuchepoch:{newest}"), "history_lost"),
        (format!("{epoch}:{}", newest + 1000), "history_lost"),
    ];
    let mut head = newest;
    for (last_event_id, reason) in &cases {
        let (mut sse, _) = open(SseRequest::new(ws.addr, "/events").last_event_id(last_event_id)).await;
        let reset = sse.next_event().await;
        assert!(reset.is("reset"), "{last_event_id}: never a silent skip; got\n{reset}");
        assert_eq!(reset.id, None, "a reset moves nothing: {reset}");
        let data = reset.json();
        assert_eq!(data["reason"], *reason, "{last_event_id}: {data}");
        assert_eq!(data["position"], json!({"epoch": epoch, "pos": head}), "the newest position now: {data}");
        assert!(data["message"].as_str().unwrap().contains("snapshot"), "{data}");

        // The stream then continues live.
        insert(&system, &["after"]).await;
        let live = sse.changes(1).await.remove(0);
        assert_eq!(live["order"]["customer_name"], "after", "{last_event_id}");
        head += 1;
        assert_eq!(live["pos"].as_u64(), Some(head));
        plain.events(1).await;
        assert!(events_within(&mut sse, Duration::from_millis(200)).await.is_empty());
    }
    // The oldest position still served is the one before the first kept entry.
    let kept_from = newest - 2;
    let from = format!("{epoch}:{}", kept_from - 1);
    let (mut sse, _) = open(SseRequest::new(ws.addr, "/events").last_event_id(&from)).await;
    let events = sse.events_until("subscribed").await;
    let changes: Vec<Value> = events.iter().filter(|e| e.is_change()).map(SseEvent::json).collect();
    assert!(changes.len() < events.len(), "subscribed ends the replay");
    assert_eq!(positions(&changes), (kept_from..=head).collect::<Vec<_>>(), "{events:?}");
    assert_eq!(ws.metric("ws_resets_total").await, 3);
}

#[tokio::test]
async fn filters_and_select_on_events_send_only_matching_rows_and_only_those_columns() {
    let system = System::start(1).await;
    let ws = &system.ws[0];
    let mut plain = WsClient::connect(&ws.ws_url()).await;
    system.sql("INSERT INTO orders (customer_name, product_name, status) VALUES ('Old', 'p', 'pending'), ('Paid', 'p', 'paid')").await;
    plain.events(2).await; // delivered before the stream opens: not in it
    let query = "filter=status=eq.pending&select=id,status";
    let (mut sse, _) = open(SseRequest::new(ws.addr, &format!("/events?{query}"))).await;
    let mut reference = WsClient::connect(&format!("{}?{query}", ws.ws_url())).await;

    system.sql("INSERT INTO orders (customer_name, product_name, status) VALUES ('A', 'p', 'pending')").await;
    system.sql("INSERT INTO orders (customer_name, product_name, status) VALUES ('B', 'p', 'paid')").await;
    system.sql("UPDATE orders SET status = 'shipped' WHERE customer_name = 'A'").await; // leaves the view
    system.sql("UPDATE orders SET status = 'pending' WHERE customer_name = 'B'").await; // enters it
    system.sql("UPDATE orders SET amount = 3 WHERE customer_name = 'Paid'").await; // never in it
    let ids: Vec<i64> = system
        .sql("SELECT id FROM orders WHERE customer_name IN ('A', 'B') ORDER BY customer_name")
        .await
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let [a, b] = ids[..] else { panic!("the ids of A and B: {ids:?}") };
    system.sql("DELETE FROM orders WHERE customer_name = 'B'").await;

    let expected = [
        ("INSERT", a, "pending", None),
        ("UPDATE", a, "shipped", Some("leave")),
        ("UPDATE", b, "pending", Some("enter")),
        ("DELETE", b, "pending", None),
    ];
    let from_ws = reference.events(4).await;
    for (frame, (op, id, status, view)) in from_ws.iter().zip(expected) {
        let change = sse.next_change().await;
        assert_eq!(change.json(), *frame, "the same frame as on a WebSocket with the same filter");
        assert_eq!(change.id.as_deref(), Some(id_of(frame).as_str()));
        assert_eq!(
            (frame["operation"].as_str(), frame["order"]["id"].as_i64(), frame["order"]["status"].as_str()),
            (Some(op), Some(id), Some(status)),
            "{frame}"
        );
        assert_eq!(frame["view"].as_str(), view, "{frame}");
        let columns: Vec<&String> = frame["order"].as_object().unwrap().keys().collect();
        assert_eq!(columns, ["id", "status"], "only the selected columns: {frame}");
        if let Some(old) = frame.get("old") {
            assert_eq!(old.as_object().unwrap().keys().collect::<Vec<_>>(), ["id", "status"], "{frame}");
        }
    }
    assert!(events_within(&mut sse, Duration::from_millis(300)).await.is_empty(), "nothing that does not match");
}

#[tokio::test]
async fn a_filtered_snapshot_on_events_is_a_named_event_with_its_position_and_only_matching_rows() {
    let system = System::start(1).await;
    let ws = &system.ws[0];
    let mut plain = WsClient::connect(&ws.ws_url()).await;
    system.sql("INSERT INTO orders (customer_name, product_name, status) VALUES ('P1', 'p', 'pending'), ('X', 'p', 'paid'), ('P2', 'p', 'pending')").await;
    let seen = plain.events(3).await;

    let path = "/events?snapshot=true&filter=status=eq.pending&select=id,customer_name";
    let (mut sse, _) = open(SseRequest::new(ws.addr, path)).await;
    let snapshot = sse.next_event().await;
    assert!(snapshot.is("snapshot"), "{snapshot}");
    assert_eq!(snapshot.id.as_deref(), Some(id_of(&seen[2]).as_str()), "its id is its position");
    let data = snapshot.json();
    assert_eq!(data["position"], json!({"epoch": seen[2]["epoch"], "pos": seen[2]["pos"]}));
    let mut rows: Vec<Value> = data["rows"].as_array().unwrap().iter().map(|r| r["order"].clone()).collect();
    rows.sort_by_key(|r| r["id"].as_i64());
    let expected: Vec<Value> = [&seen[0], &seen[2]]
        .iter()
        .map(|e| json!({"id": e["order"]["id"], "customer_name": e["order"]["customer_name"]}))
        .collect();
    assert_eq!(rows, expected, "only the pending rows, only id and customer_name");
    let subscribed = sse.next_event().await;
    assert!(subscribed.is("subscribed"), "{subscribed}");
    assert_eq!(subscribed.id, snapshot.id);

    system.sql("INSERT INTO orders (customer_name, product_name, status) VALUES ('no', 'p', 'paid'), ('P3', 'p', 'pending')").await;
    let live = sse.changes(1).await.remove(0);
    assert_eq!(live["order"], json!({"id": live["order"]["id"], "customer_name": "P3"}));
    assert_eq!(live["pos"].as_u64(), Some(seen[2]["pos"].as_u64().unwrap() + 2), "after the snapshot's position");
}

#[tokio::test]
async fn a_malformed_since_or_filter_is_answered_with_400_and_no_stream() {
    let redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let cases = [
        (SseRequest::new(ws.addr, "/events?since=garbage"), "since"),
        (SseRequest::new(ws.addr, "/events?since=e:notanumber"), "since"),
        (SseRequest::new(ws.addr, "/events").last_event_id("no position"), "Last-Event-ID"),
        (SseRequest::new(ws.addr, "/events?filter=status=zz.pending"), "invalid filter"),
        (SseRequest::new(ws.addr, "/events?filter=nocolumn"), "invalid filter"),
        (SseRequest::new(ws.addr, "/events?snapshot=maybe"), "snapshot"),
    ];
    for (request, named) in cases {
        let what = format!("{request:?}");
        let sse = request.send().await;
        assert_eq!(sse.status, 400, "{what}: {}", sse.status_line);
        assert_ne!(sse.header("content-type"), Some("text/event-stream"), "{what}");
        let body = sse.body_text().await;
        assert!(body.contains(named), "{what}: the refusal names the problem: {body:?}");
    }
    assert_eq!(ws.metric("ws_open_sse_streams").await, 0);
    assert_eq!(ws.metric("ws_connections_total").await, 0, "no stream was opened");
}

#[tokio::test]
async fn a_stuck_sse_reader_is_cut_off_as_a_slow_consumer_and_gets_its_data_then_close_4008() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.queue_bytes = 2 * 1024 * 1024;
    config.send_timeout = Duration::from_secs(120); // the bound must act, not the timeout
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;
    let mut stuck = SseRequest::new(ws.addr, "/events").recv_buffer(4096).send().await;
    assert_eq!(stuck.status, 200);
    let (mut fast_sse, _) = open(SseRequest::new(ws.addr, "/events")).await;
    let (mut fast_ws, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    // 80 KB events in chunks of 16, each read by the fast clients before the next, until the
    // replica notices the stuck one (kernel and hyper buffers absorb some first).
    let (chunk, padding) = (16, 80_000);
    let mut next = 0;
    while ws.metric("ws_dropped_slow_total").await == 0 {
        assert!(next < 800, "no slow consumer noticed after {next} events (64 MB)");
        e2e::history::publish_frames(&redis.url(), (next..next + chunk).map(|n| e2e::history::event_frame(n, padding)))
            .await;
        for n in next..next + chunk {
            assert_eq!(fast_ws.next_json().await["id"], n, "the fast WebSocket client gets every event");
            let change = fast_sse.next_change().await;
            assert_eq!(change.id, Some(format!("test:{n}")), "the fast SSE client gets every event");
        }
        next += chunk;
    }

    // The stuck reader reads again: a gap-free run of events from the first, then the close.
    let items = stuck.read_to_end(WAIT).await;
    assert!(stuck.ended_cleanly(), "the body ends properly (its last chunk)");
    let events: Vec<&SseEvent> = items
        .iter()
        .filter_map(|i| match i {
            SseItem::Event(e) => Some(e),
            SseItem::Comment(_) => None,
        })
        .collect();
    assert_eq!(events[0].retry, Some(1000));
    assert!(events[1].is("hello"), "{}", events[1]);
    let close = events.last().unwrap();
    assert!(close.is("close"), "the stream ends with event: close, got\n{close}");
    let data = close.json();
    assert_eq!(data["code"], 4008, "{data}");
    assert!(data["reason"].as_str().unwrap().starts_with("slow consumer: fell "), "{data}");
    let changes = &events[2..events.len() - 1];
    let ids: Vec<u64> = changes.iter().map(|c| pos_of(c.id.as_deref().unwrap())).collect();
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>(), "what arrived is every event up to the close");
    assert!((ids.len() as u64) < next, "the stuck reader did not get everything: {} of {next}", ids.len());
    assert!(changes.iter().all(|c| c.json()["order"]["pad"].as_str().map(str::len) == Some(padding)));
    assert_eq!(ws.metric("ws_dropped_slow_total").await, 1);
    assert_eq!(ws.metric("ws_send_failures_total").await, 0, "closed by the bound, not the send timeout");

    // The others are unaffected.
    e2e::history::publish_frames(&redis.url(), [e2e::history::event_frame(next, 0)]).await;
    assert_eq!(fast_ws.next_json().await["id"], next);
    assert_eq!(fast_sse.next_change().await.id, Some(format!("test:{next}")));
    wait_until(WAIT, "only the fast clients remain", || async {
        ws.metric("ws_open_connections").await == 2 && ws.metric("ws_open_sse_streams").await == 1
    })
    .await;
}

#[tokio::test]
async fn a_replica_shutting_down_ends_the_stream_with_event_close_1001() {
    let redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let (mut sse, _) = open(SseRequest::new(ws.addr, "/events")).await;
    e2e::history::publish_frames(&redis.url(), [e2e::history::event_frame(1, 0)]).await;
    assert_eq!(sse.next_change().await.id.as_deref(), Some("test:1"));

    let took = ws.stop().await;
    let items = sse.read_to_end(WAIT).await;
    assert!(sse.ended_cleanly(), "the body ends properly (its last chunk): {items:?}");
    let Some(SseItem::Event(close)) = items.last() else { panic!("no close event: {items:?}") };
    assert!(close.is("close"), "{close}");
    assert_eq!(close.json(), json!({"code": 1001, "reason": "server shutting down; reconnect"}));
    assert!(items.iter().filter(|i| matches!(i, SseItem::Event(_))).count() == 1, "only the close: {items:?}");
    assert!(took < Duration::from_secs(3), "an open stream does not hold the shutdown for its grace: {took:?}");
}

#[tokio::test]
async fn curl_dash_n_reads_the_stream_live_and_resumes_with_last_event_id() {
    let Some(curl) = which_curl() else {
        eprintln!("curl is not installed: skipping the curl -N test");
        return;
    };
    let system = System::start(1).await;
    let url = format!("http://{}/events", system.ws[0].addr);

    let mut live = Curl::start(&curl, &url, None);
    assert_eq!(live.next_event().await.retry, Some(1000));
    let hello = live.next_event().await;
    assert!(hello.is("hello"), "{hello}");
    insert(&system, &["c1"]).await;
    let first = live.next_event().await;
    assert_eq!(first.json()["order"]["customer_name"], "c1", "arrives while curl is still reading: unbuffered");
    insert(&system, &["c2"]).await;
    let second = live.next_event().await;
    assert_eq!(second.json()["order"]["customer_name"], "c2");

    let mut resumed = Curl::start(&curl, &url, first.id.as_deref());
    let events = resumed.events_until("subscribed").await;
    let changes: Vec<Value> = events.iter().filter(|e| e.is_change()).map(SseEvent::json).collect();
    assert_eq!(names(&changes), ["c2"], "{events:?}");
    assert_eq!(changes[0]["pos"].as_u64(), Some(pos_of(first.id.as_deref().unwrap()) + 1));
}

/// `curl -N` reading a stream, its output parsed as it comes.
struct Curl {
    child: tokio::process::Child,
    stdout: tokio::process::ChildStdout,
    parser: e2e::sse::Parser,
}

/// curl on `PATH`, if installed.
fn which_curl() -> Option<String> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| std::path::Path::new(dir).join("curl"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

impl Curl {
    fn start(curl: &str, url: &str, last_event_id: Option<&str>) -> Curl {
        let mut command = tokio::process::Command::new(curl);
        command.args(["-N", "-sS", "--max-time", "30", "-H", "Accept: text/event-stream"]);
        if let Some(id) = last_event_id {
            command.args(["-H", &format!("Last-Event-ID: {id}")]);
        }
        let mut child = command
            .arg(url)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {curl}: {e}"));
        let stdout = child.stdout.take().expect("piped");
        Curl { child, stdout, parser: e2e::sse::Parser::new() }
    }

    /// The next event (comments skipped), within [`WAIT`].
    async fn next_event(&mut self) -> SseEvent {
        use tokio::io::AsyncReadExt;
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut buf = [0_u8; 8192];
        loop {
            while let Some(item) = self.parser.next_item() {
                if let SseItem::Event(event) = item {
                    return event;
                }
            }
            let n = tokio::time::timeout_at(deadline, self.stdout.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("curl printed no event within {WAIT:?}"))
                .expect("read curl's output");
            assert_ne!(n, 0, "curl exited: {:?}", self.child.try_wait());
            self.parser.feed(&buf[..n]);
        }
    }

    /// Events up to and including the first named `name`.
    async fn events_until(&mut self, name: &str) -> Vec<SseEvent> {
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
}
