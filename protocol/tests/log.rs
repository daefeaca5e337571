//! The replay log's Lua scripts against a real Redis.

use futures_util::StreamExt;
use protocol::{
    channel::ChannelName,
    log::{Append, Log, StateChange, is_fenced},
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

    let claim = log.claim(&mut conn, "epochA", 10).await.unwrap();
    assert_eq!((claim.fence, claim.epoch.as_str(), claim.seq, claim.seeded), (1, "epochA", 0, false));
    log.seed(&mut conn, claim.fence, &[("orders:8".into(), r#"{"id":8}"#.into())], true, false).await.unwrap();
    // A seed that starts over clears what an interrupted one left.
    log.seed(&mut conn, claim.fence, &[("orders:9".into(), r#"{"id":9}"#.into())], true, true).await.unwrap();

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
    assert_eq!(log.append(&mut conn, claim.fence, 1000, &events).await.unwrap(), 3);

    let frames = log.read_after(&mut conn, 0, 10).await.unwrap();
    assert_eq!(frames.len(), 3);
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
    let second = log.claim(&mut conn, "unused", 10).await.unwrap();
    assert_eq!((second.fence, second.epoch.as_str(), second.seq, second.seeded), (2, "epochA", 3, true));
    assert_eq!(second.recent_event_ids, vec![103, 102, 101]);
    let err = log.append(&mut conn, claim.fence, 1000, &events[..1]).await.unwrap_err();
    assert!(is_fenced(&err), "{err}");

    // Redis restarted empty: the next claim starts a new history.
    redis.restart().await;
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let err = log.append(&mut conn, second.fence, 1000, &events[..1]).await.unwrap_err();
    assert!(is_fenced(&err), "{err}");
    let fresh = log.claim(&mut conn, "epochB", 10).await.unwrap();
    assert_eq!((fresh.epoch.as_str(), fresh.seq, fresh.seeded), ("epochB", 0, false));
    assert!(fresh.recent_event_ids.is_empty());
}
