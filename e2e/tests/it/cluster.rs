//! A real Redis Cluster under the services: the publisher finds it from one node's URL
//! (`REDIS_CLUSTER=auto`), the replicas from the seed list; events flow by sharded pub/sub,
//! clients resume from the log, and a master SIGKILLed mid-stream loses nothing: its replica
//! takes over, and the publisher's position check and new history carry every change.

use std::time::{Duration, Instant};

use e2e::{
    Crowd, Service, WAIT, WsClient,
    history::{self, table},
    publisher_config, spawn_publisher, spawn_ws, write_mix, ws_config,
};
use protocol::{channel::ChannelName, log::Log};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use testkit::{PgServer, RedisCluster, wait_until};
use tokio::sync::watch;

/// The key every atomic step of the log touches (its slot is the log's).
const LOG_KEY: &str = "{orders_updates}:meta";

struct Clustered {
    pg: PgServer,
    cluster: RedisCluster,
    publisher: Service,
    ws: Vec<Service>,
}

impl Clustered {
    async fn start(replicas_per_master: usize, ws_replicas: usize) -> Clustered {
        let (pg, cluster) = tokio::join!(PgServer::start(), RedisCluster::start(3, replicas_per_master));
        // One node's URL: cluster mode is detected. The replicas get the seed list.
        let publisher = spawn_publisher(publisher_config(&pg.url(), &cluster.url())).await;
        let mut ws = Vec::new();
        for _ in 0..ws_replicas {
            ws.push(spawn_ws(ws_config(&cluster.urls())).await);
        }
        let system = Clustered { pg, cluster, publisher, ws };
        system.publisher.wait_ready().await;
        for ws in &system.ws {
            ws.wait_ready().await;
        }
        system
    }

    async fn sql(&self, sql: &str) {
        let mut conn = PgConnection::connect(&self.pg.url()).await.expect("connect to postgres");
        sqlx::query(sql).execute(&mut conn).await.expect("statement runs");
    }
}

fn position(event: &Value) -> String {
    format!("{}:{}", event["epoch"].as_str().expect("epoch"), event["pos"])
}

#[tokio::test]
async fn events_flow_through_a_redis_cluster_by_sharded_pub_sub_and_clients_resume_from_its_log() {
    let system = Clustered::start(0, 2).await;
    assert!(
        !system.publisher.logs(&["connected to redis", "cluster=true"]).is_empty(),
        "the publisher detected the cluster from one node's URL"
    );

    let mut a = WsClient::connect(&system.ws[0].ws_url()).await;
    let mut b = WsClient::connect(&system.ws[1].ws_url()).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Sharded', 'pubsub')").await;
    let first = a.events(1).await.remove(0);
    assert_eq!(first["order"]["customer_name"], "Sharded");
    assert_eq!(b.events(1).await[0]["id"], first["id"], "both replicas got it");

    // The channel is sharded: a plain SUBSCRIBE on the channel's node sees nothing, because
    // SPUBLISH reaches only shard subscribers. (A broadcast PUBLISH would reach it.)
    let node = system.cluster.master_for_key(LOG_KEY).await;
    let client = redis::Client::open(system.cluster.node_urls()[node].as_str()).expect("node url");
    let mut plain = client.get_async_pubsub().await.expect("connect to the node");
    plain.subscribe("orders_updates").await.expect("subscribe");

    drop(b);
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Missed', 'one')").await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Missed', 'two')").await;
    let live = a.events(2).await;
    let mut resumed = WsClient::connect(&format!("{}?since={}", system.ws[1].ws_url(), position(&first))).await;
    let replayed = resumed.events(2).await;
    assert_eq!(
        replayed.iter().map(|e| &e["id"]).collect::<Vec<_>>(),
        live.iter().map(|e| &e["id"]).collect::<Vec<_>>(),
        "the resume replays what was missed, from the cluster's log"
    );
    use futures_util::StreamExt;
    let stray = tokio::time::timeout(Duration::from_millis(300), plain.on_message().next()).await;
    assert!(stray.is_err(), "a plain subscriber got a sharded message: {stray:?}");

    // The log and the state are in the cluster, one slot, and match the table.
    let frames = history::log_frames(&system.cluster.urls()).await;
    assert_eq!(frames.len(), 3);
    let expected = table(&system.pg).await;
    assert_eq!(history::state(&system.cluster.urls()).await, expected);
}

/// How the log's master dies.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Failover {
    /// SIGKILL; its replica is up to date (replication is fast).
    Clean,
    /// Its replica is frozen and its replication link cut while appends go on, then the master
    /// is SIGKILLed and the replica thawed: the promoted master lacks the newest appends, which
    /// clients already saw.
    Lossy,
}

#[tokio::test]
async fn a_master_sigkilled_mid_stream_loses_nothing_its_replica_takes_over() {
    let rebases = kill_the_log_master_under_load(Failover::Clean).await;
    eprintln!("clean failover: {rebases} rebases");
}

#[tokio::test]
async fn a_failover_that_loses_the_newest_appends_is_bridged_by_a_new_history() {
    let rebases = kill_the_log_master_under_load(Failover::Lossy).await;
    assert!(rebases >= 1, "the promoted master lacked appends, so clients must have moved to a new history");
}

/// Followers and plain clients on two replicas while writers commit; the log's master dies as
/// `how` says. Every client must end with the table, nothing skipped or repeated, never told to
/// start over. Returns the fewest rebases a follower saw.
async fn kill_the_log_master_under_load(how: Failover) -> usize {
    let mut system = Clustered::start(1, 2).await;
    let urls: Vec<String> = system.ws.iter().map(Service::ws_url).collect();

    let mut crowd = Crowd::start(4, &urls, &urls);
    let (writers_stop_tx, writers_stop_rx) = watch::channel(false);
    let writers: Vec<_> =
        (0..3).map(|w| tokio::spawn(write_mix(system.pg.url(), 31 + w, writers_stop_rx.clone()))).collect();

    let started = Instant::now();
    let step = |what: &str| eprintln!("cluster {:>5.1}s: {what}", started.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let master = system.cluster.master_for_key(LOG_KEY).await;
    let replica = system.cluster.replicas_of(master)[0];
    if how == Failover::Lossy {
        step(&format!("freeze node {replica}, the replica of the log's master: replication stops"));
        system.cluster.freeze(replica);
        // The kernel would still deliver what the master wrote to the frozen replica's socket:
        // cut the link, so everything appended from here on exists on the master alone.
        let node = redis::Client::open(system.cluster.node_urls()[master].as_str()).expect("node url");
        let mut conn = node.get_multiplexed_async_connection().await.expect("connect to the master");
        let cut: i64 =
            redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica").query_async(&mut conn).await.expect("cut");
        assert_eq!(cut, 1, "the master had one replica link");
        let before = system.publisher.metric("publisher_events_published_total").await;
        wait_until(WAIT, "appends the replica lacks", || async {
            system.publisher.metric("publisher_events_published_total").await > before + 50
        })
        .await;
    }
    step(&format!("SIGKILL node {master}, the master of the log's slot"));
    system.cluster.kill(master).await;
    if how == Failover::Lossy {
        system.cluster.thaw(replica);
    }
    let promoted = system.cluster.wait_for_failover(master).await;
    step(&format!("node {promoted} promoted"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    step("drop every client connection: they resume from the new master's log");
    crowd.drop_connections();
    tokio::time::sleep(Duration::from_secs(2)).await;
    writers_stop_tx.send_replace(true);
    let mut committed = 0;
    for w in writers {
        committed += w.await.expect("writer finished");
    }
    step(&format!("{committed} transactions committed; waiting for every client to catch up"));

    let expected = table(&system.pg).await;
    let urls_list = system.cluster.urls();
    let converged = tokio::time::timeout(Duration::from_secs(30), async {
        while history::state(&urls_list).await != expected {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let log = Log::new(&ChannelName::parse("orders_updates").expect("valid channel"));
    let head = log.head(&mut history::connect(&urls_list).await).await.expect("read the head");
    let caught_up = crowd.caught_up(&head, Duration::from_secs(30)).await;
    step(&format!("head {head:?}; every client caught up: {caught_up}"));
    let (followers, plain) = crowd.stop().await;
    let logs = || {
        let mut all = system.publisher.logs(&["WARN"]);
        for ws in &system.ws {
            all.extend(ws.logs(&["WARN"]));
        }
        all.join("\n")
    };
    assert!(converged.is_ok(), "the cluster's state never matched the table\n{}", logs());
    for f in plain {
        step(&format!("{}: {} events", f.name, f.events));
        assert!(f.violations.is_empty(), "{} saw broken promises: {:#?}\n{}", f.name, f.violations, logs());
        assert_eq!(f.state, expected, "{}'s folded events differ from the table\n{}", f.name, logs());
    }
    let mut rebases = usize::MAX;
    for f in followers {
        rebases = rebases.min(f.rebases);
        step(&format!(
            "{}: {} events, {} snapshots, {} resumes, {} rebases, at {:?}",
            f.name, f.events, f.snapshots, f.resumes, f.rebases, f.position
        ));
        assert!(f.violations.is_empty(), "{} saw broken promises: {:#?}\n{}", f.name, f.violations, logs());
        assert!(f.resumes >= 1, "{} never resumed", f.name);
        assert_eq!(f.snapshots, 1, "{} was told to start over: {:#?}\n{}", f.name, f.resets, logs());
        assert_eq!(f.state, expected, "{}'s copy differs from the table\n{}", f.name, logs());
    }
    assert!(committed > 100, "the writers committed only {committed} transactions");
    wait_until(WAIT, "every service ready on the promoted master", || async {
        system.publisher.readyz().await == 200
            && system.ws[0].readyz().await == 200
            && system.ws[1].readyz().await == 200
    })
    .await;
    rebases
}

#[tokio::test]
async fn a_master_down_elsewhere_in_the_cluster_does_not_disturb_the_log_s_slot() {
    let mut system = Clustered::start(0, 1).await;
    // Without full coverage, the slots of a dead master go unserved and the rest keep working.
    for url in system.cluster.node_urls() {
        let client = redis::Client::open(url.as_str()).expect("node url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect to a node");
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("no")
            .query_async(&mut conn)
            .await
            .expect("config set");
    }
    let log_master = system.cluster.master_for_key(LOG_KEY).await;
    // Node 0 when it is not the log's: the publisher's only URL then names a dead node, and it
    // must reconnect through the nodes it learned.
    let other = (0..3).find(|&n| n != log_master).expect("another master");
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    let (ws_before, pub_before) = (
        system.ws[0].metric("ws_redis_reconnects_total").await,
        system.publisher.metric("publisher_redis_reconnects_total").await,
    );
    system.cluster.kill(other).await;
    // Past the cluster's node timeout (1 s) and several keepalives (1 s) of both services.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Still', 'served')").await;
    assert_eq!(client.next_json().await["order"]["customer_name"], "Still");
    assert_eq!(system.ws[0].readyz().await, 200);
    assert_eq!(system.publisher.readyz().await, 200);
    // A replica learns only that "a node connection was lost" (redis-rs does not say which), so
    // it may resubscribe once, filling from the log; it must not keep failing.
    assert!(system.ws[0].metric("ws_redis_reconnects_total").await <= ws_before + 1, "the replica's session held");
    assert_eq!(
        system.publisher.metric("publisher_redis_reconnects_total").await,
        pub_before,
        "the publisher's connection held"
    );
}
