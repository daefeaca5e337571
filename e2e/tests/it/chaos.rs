//! The proof of "nothing committed is lost": writers commit a continuous mix of changes while
//! the publisher, Redis, ws-server replicas and client connections are killed and restarted
//! on a schedule. Afterwards every client's copy of the rows (its snapshot plus the events it
//! received) must equal `SELECT * FROM orders`, with no position skipped and no event twice.
//! Plain clients of the original design, connected once to a replica that is never killed,
//! must fold every change exactly once through it all, Redis losing its data included.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use e2e::{Crowd, Process, WAIT, history::table, write_mix};
use protocol::{channel::ChannelName, log::Log};
use testkit::{PgServer, RedisServer, free_port};
use tokio::sync::watch;

const WRITE_FOR: Duration = Duration::from_secs(24);

/// Starts a publisher process on a fresh health port.
fn start_publisher(name: &str, pg: &PgServer, redis: &RedisServer, dir: &Path) -> Process {
    crate::support::start_publisher(name, pg, redis, dir, &[("PUBLISHER_STANDBY_POLL", "200ms")])
}

/// Starts a ws-server process on `port`, on one thread (`WS_THREADS=1`, as the benchmark runs
/// them): the faults here then also cover the single-threaded runtime.
fn start_replica(name: &str, port: u16, redis: &RedisServer, dir: &Path) -> Process {
    let env = [
        ("REDIS_URL", redis.url()),
        ("PORT", port.to_string()),
        ("WS_BIND_ADDR", "127.0.0.1".to_owned()),
        ("WS_THREADS", "1".to_owned()),
        ("RETRY_MIN_DELAY", "50ms".to_owned()),
        ("RETRY_MAX_DELAY", "500ms".to_owned()),
    ];
    Process::start(env!("CARGO_BIN_EXE_e2e-ws-server"), name, port, &env, dir)
}

/// Which of the publishers is active now, waiting (bounded) until one is.
async fn active(publishers: &[Process]) -> usize {
    testkit::wait_for(WAIT, "an active publisher", || async {
        for (i, p) in publishers.iter().enumerate() {
            if p.metric("publisher_active").await == Some(1) {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// SIGKILLs whichever publisher is active and starts it again (it becomes the standby).
async fn kill_active_publisher(
    publishers: &mut [Process],
    pg: &PgServer,
    redis: &RedisServer,
    dir: &Path,
    step: &impl Fn(&str),
) {
    let a = active(publishers).await;
    step(&format!("SIGKILL the active publisher ({}); the standby takes over", publishers[a].name));
    publishers[a].kill().await;
    publishers[a] = start_publisher(&format!("{}-again", publishers[a].name), pg, redis, dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_while_everything_fails_in_turn() {
    let dir = tempfile::tempdir().expect("log dir");
    let (pg, mut redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let mut publishers = vec![start_publisher("publisher-a", &pg, &redis, dir.path())];
    active(&publishers).await;
    publishers.push(start_publisher("publisher-b", &pg, &redis, dir.path()));
    let ports = [free_port(), free_port()];
    let mut replicas =
        [start_replica("ws-1", ports[0], &redis, dir.path()), start_replica("ws-2", ports[1], &redis, dir.path())];
    // The replica plain clients stay connected to: never killed, but its Redis goes away too.
    let steady_port = free_port();
    let steady = start_replica("ws-steady", steady_port, &redis, dir.path());
    for r in replicas.iter().chain([&steady]) {
        r.wait_ready().await;
    }
    let urls: Vec<String> = ports.iter().map(|p| format!("ws://127.0.0.1:{p}/ws")).collect();

    let steady_url = format!("ws://127.0.0.1:{steady_port}/ws");
    let mut crowd = Crowd::start(4, &urls, &[steady_url.clone(), steady_url]);
    let (writers_stop_tx, writers_stop_rx) = watch::channel(false);
    let writers: Vec<_> = (0..3).map(|w| tokio::spawn(write_mix(pg.url(), 7 + w, writers_stop_rx.clone()))).collect();

    // The schedule; each step is logged so a failure can be read against it.
    let started = Instant::now();
    let step = |what: &str| eprintln!("chaos {:>5.1}s: {what}", started.elapsed().as_secs_f64());
    let at = |secs: u64| tokio::time::sleep_until((started + Duration::from_secs(secs)).into());

    // Redis data loss early, while clients hold positions of the old history: each new history
    // must carry what was committed meanwhile as events and re-offer what replicas may have
    // missed, so nobody re-snapshots (which would hide a loss). Then two publisher kills,
    // replica kills, cut subscriptions and dropped clients.
    at(2).await;
    step("restart Redis (it comes back empty: a new history)");
    redis.stop().await;
    redis.restart().await;

    at(4).await;
    kill_active_publisher(&mut publishers, &pg, &redis, dir.path(), &step).await;

    at(6).await;
    step("SIGKILL Redis and restart it (empty again: the last new history)");
    redis.kill().await;
    redis.restart().await;

    at(9).await;
    kill_active_publisher(&mut publishers, &pg, &redis, dir.path(), &step).await;

    at(11).await;
    step("SIGKILL replica ws-1; restart it on the same port");
    replicas[0].kill().await;
    // Away long enough for events to pass it by: the restarted replica must fill the gap.
    tokio::time::sleep(Duration::from_millis(500)).await;
    replicas[0] = start_replica("ws-1-again", ports[0], &redis, dir.path());

    at(13).await;
    step("drop every client connection");
    crowd.drop_connections();

    at(15).await;
    step("cut every replica's Redis subscription (CLIENT KILL TYPE pubsub): they must fill the gap");
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect to redis");
    let killed: i64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.expect("kill");
    step(&format!("cut {killed} subscriptions"));

    at(17).await;
    kill_active_publisher(&mut publishers, &pg, &redis, dir.path(), &step).await;

    at(19).await;
    step("SIGKILL replica ws-2; restart it on the same port");
    replicas[1].kill().await;
    // As above.
    tokio::time::sleep(Duration::from_millis(500)).await;
    replicas[1] = start_replica("ws-2-again", ports[1], &redis, dir.path());

    at(21).await;
    step("drop every client connection");
    crowd.drop_connections();

    tokio::time::sleep_until((started + WRITE_FOR).into()).await;
    step("stop the writers");
    writers_stop_tx.send_replace(true);
    let mut committed = 0;
    for w in writers {
        committed += w.await.expect("writer finished");
    }
    step(&format!("{committed} transactions committed; waiting for every client to catch up"));

    // Converged: the Redis state equals the table and every client has applied the newest
    // position (bounded waits on those conditions), then stop them.
    let expected = table(&pg).await;
    let converged = tokio::time::timeout(Duration::from_secs(30), async {
        while e2e::history::state(&redis.url()).await != expected {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let log = Log::new(&ChannelName::parse("orders_updates").expect("valid channel"));
    let redis_client = redis::Client::open(redis.url()).expect("redis url");
    let mut head_conn = redis_client.get_multiplexed_async_connection().await.expect("connect to redis");
    let head = log.head(&mut head_conn).await.expect("read the head");
    let caught_up = crowd.caught_up(&head, Duration::from_secs(30)).await;
    step(&format!("head {head:?}; every client caught up: {caught_up}"));
    let (results, plain_results) = crowd.stop().await;
    let logs = || {
        publishers
            .iter()
            .chain(replicas.iter())
            .chain([&steady])
            .map(|p| format!("--- {} ---\n{}", p.name, p.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(converged.is_ok(), "the Redis state never matched the table\n{}", logs());
    for f in &plain_results {
        step(&format!("{}: {} events", f.name, f.events));
        assert!(f.violations.is_empty(), "{} saw broken promises: {:#?}\n{}", f.name, f.violations, logs());
        assert_eq!(f.state, expected, "{}'s folded events differ from SELECT * FROM orders\n{}", f.name, logs());
    }
    for f in &results {
        step(&format!(
            "{}: {} events, {} snapshots, {} resumes, {} rebases, at {:?}",
            f.name, f.events, f.snapshots, f.resumes, f.rebases, f.position
        ));
        assert!(f.violations.is_empty(), "{} saw broken promises: {:#?}\n{}", f.name, f.violations, logs());
        assert!(
            f.events > 100 && f.resumes >= 2,
            "{} was not exercised: {} events, {} resumes",
            f.name,
            f.events,
            f.resumes
        );
        assert_eq!(
            f.snapshots,
            1,
            "{} was told to start over although the outbox held everything: {:#?}\n{}",
            f.name,
            f.resets,
            logs()
        );
        assert_eq!(f.state, expected, "{}'s copy differs from SELECT * FROM orders\n{}", f.name, logs());
    }
    assert!(committed > 200, "the writers committed only {committed} transactions");
}
