//! The replay log's Lua scripts against a real Redis.

use futures_util::StreamExt;
use protocol::{
    channel::ChannelName,
    log::{Append, Bridge, Log, Position, StateChange, frame, is_fenced},
};
use testkit::RedisServer;

fn append<'a>(rest: &'a str, id: i64, state: StateChange<'a>) -> Append<'a> {
    Append { body_rest: rest, event_id: Some(id), state }
}

#[tokio::test]
async fn append_orders_publishes_logs_and_tracks_state_in_one_step() {
    let mut redis = RedisServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let log = Log::new(&ChannelName::parse("orders_updates").unwrap());

    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("orders_updates").await.unwrap();
    let mut messages = pubsub.into_on_message();

    let claim = log.claim(&mut conn, "epochA", 10, false, None).await.unwrap();
    assert_eq!((claim.fence, claim.epoch.as_str(), claim.seq, claim.seeded), (1, "epochA", 0, false));
    log.seed(&mut conn, &claim, &[("orders:8".into(), r#"{"id":8}"#.into())], true, false).await.unwrap();
    // A seed that starts over clears what an interrupted one left.
    log.seed(&mut conn, &claim, &[("orders:9".into(), r#"{"id":9}"#.into())], true, true).await.unwrap();

    let events = [
        append(
            r#""id":1,"operation":"INSERT","order":{"id":1}}"#,
            101,
            StateChange::Set { field: "orders:1", row: r#"{"id":1}"# },
        ),
        append(
            r#""id":2,"operation":"UPDATE","order":{"id":1,"s":2}}"#,
            102,
            StateChange::Set { field: "orders:1", row: r#"{"id":1,"s":2}"# },
        ),
        append(r#""id":3,"operation":"DELETE","order":{"id":9}}"#, 103, StateChange::Delete { field: "orders:9" }),
    ];
    assert_eq!(log.append(&mut conn, &claim, Some(0), 1000, &events).await.unwrap(), 3);
    // An append that expects the log elsewhere (a failover lost writes under it) is refused.
    let err = log.append(&mut conn, &claim, Some(2), 1000, &events[..1]).await.unwrap_err();
    assert!(is_fenced(&err), "{err}");
    assert_eq!(log.head(&mut conn).await.unwrap().unwrap().pos, 3, "and writes nothing");

    let frames = log.read_after(&mut conn, 0, 10).await.unwrap();
    assert_eq!(frames.len(), 3);
    // The one definition of the frame format is what the real script writes.
    for ((pos, written), event) in frames.iter().zip(&events) {
        assert_eq!(written, &frame("epochA", *pos, event.body_rest));
    }
    assert_eq!(
        frames[0],
        (1, r#"{"type":"event","epoch":"epochA","pos":1,"id":1,"operation":"INSERT","order":{"id":1}}"#.to_owned())
    );
    for (pos, frame) in &frames {
        let published = messages.next().await.unwrap();
        assert_eq!(&published.get_payload::<String>().unwrap(), frame, "channel and log carry the same bytes ({pos})");
    }
    assert_eq!(log.read_after(&mut conn, 2, 10).await.unwrap().len(), 1);
    assert_eq!(log.first_pos(&mut conn).await.unwrap(), Some(1));

    let snapshot = log.snapshot(&mut conn).await.unwrap();
    assert_eq!((snapshot.epoch.as_deref(), snapshot.pos, snapshot.seeded), (Some("epochA"), 3, true));
    assert_eq!(snapshot.rows, vec![("orders:1".to_owned(), r#"{"id":1,"s":2}"#.to_owned())]);

    // A second claim fences the first publisher off and sees what it appended.
    let second = log.claim(&mut conn, "unused", 10, false, None).await.unwrap();
    assert_eq!((second.fence, second.epoch.as_str(), second.seq, second.seeded), (2, "epochA", 3, true));
    assert_eq!(second.recent, vec![(103, 3), (102, 2), (101, 1)]);
    let err = log.append(&mut conn, &claim, None, 1000, &events[..1]).await.unwrap_err();
    assert!(is_fenced(&err), "{err}");

    // Redis restarted empty: the next claim starts a new history. The old claim's fence (2)
    // comes round again in it, but its epoch does not: still fenced off.
    redis.restart().await;
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let err = log.append(&mut conn, &second, None, 1000, &events[..1]).await.unwrap_err();
    assert!(is_fenced(&err), "{err}");
    let fresh = log.claim(&mut conn, "epochB", 10, false, None).await.unwrap();
    assert_eq!((fresh.epoch.as_str(), fresh.seq, fresh.seeded), ("epochB", 0, false));
    assert!(fresh.recent.is_empty());
    let again = log.claim(&mut conn, "unused", 10, false, None).await.unwrap();
    assert_eq!((again.fence, again.epoch.as_str()), (2, "epochB"), "same fence number as `second`");
    let err = log.append(&mut conn, &second, None, 1000, &events[..1]).await.unwrap_err();
    assert!(is_fenced(&err), "a stale claim with a recurring fence number: {err}");
}

#[tokio::test]
async fn a_new_history_carries_its_bridge_and_an_interrupted_one_is_replaced() {
    let redis = RedisServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let log = Log::new(&ChannelName::parse("orders_updates").unwrap());

    // The bridge comes with the epoch, in one step: no reader sees the history without it.
    let bridge = Bridge { epoch: "epochA".into(), from: 41, to: 42 };
    let claim = log.claim(&mut conn, "epochB", 10, false, Some(&bridge)).await.unwrap();
    assert_eq!(claim.bridge.as_ref(), Some(&bridge));
    let head = log.head_with_bridge(&mut conn).await.unwrap().unwrap();
    assert_eq!(head.bridge.as_ref(), Some(&bridge));
    let old = Position { epoch: "epochA".into(), pos: 41 };
    assert_eq!(head.translate(&old), Some(Position { epoch: "epochB".into(), pos: 1 }));
    // A claim of the existing history keeps its bridge, whatever it was offered.
    let other = Bridge { epoch: "zzz".into(), from: 1, to: 2 };
    let again = log.claim(&mut conn, "unused", 10, false, Some(&other)).await.unwrap();
    assert_eq!((again.epoch.as_str(), again.bridge.as_ref()), ("epochB", Some(&bridge)));

    let rest = r#""id":7,"operation":"INSERT","order":{"id":1}}"#;
    let event = Append { body_rest: rest, event_id: Some(7), state: StateChange::None };
    log.append(&mut conn, &again, None, 1000, std::slice::from_ref(&event)).await.unwrap();

    // The publisher died before seeding: positions of epochB may have been seen, so the next
    // claim starts another history rather than appending to this one again.
    let next = log.claim(&mut conn, "epochC", 10, false, None).await.unwrap();
    assert_eq!((next.epoch.as_str(), next.seq, next.seeded, &next.bridge), ("epochC", 0, false, &None));
    assert_eq!(log.head_with_bridge(&mut conn).await.unwrap().unwrap().bridge, None);
    assert!(log.read_after(&mut conn, 0, 10).await.unwrap().is_empty());

    // `restart` replaces even a complete history (Redis came back with less than was appended).
    log.seed(&mut conn, &next, &[], true, true).await.unwrap();
    log.append(&mut conn, &next, None, 1000, std::slice::from_ref(&event)).await.unwrap();
    assert_eq!(log.claim(&mut conn, "epochD", 10, false, None).await.unwrap().epoch, "epochC");
    let restarted = log.claim(&mut conn, "epochD", 10, true, None).await.unwrap();
    assert_eq!((restarted.epoch.as_str(), restarted.seq, restarted.seeded), ("epochD", 0, false));
}
