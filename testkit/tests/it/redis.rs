//! `RedisServer`: commands, and coming back empty on the same port after stop, kill and restart.

use testkit::RedisServer;

use crate::helpers::{accepts_connections, redis_command};

#[tokio::test]
async fn redis_answers_commands_on_its_port() {
    let redis = RedisServer::start().await;

    assert_eq!(redis_command(redis.port(), &["PING"]).await, "+PONG\r\n");
    assert_eq!(redis_command(redis.port(), &["SET", "k", "v"]).await, "+OK\r\n");
    assert_eq!(redis_command(redis.port(), &["GET", "k"]).await, "$1\r\nv\r\n");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert!(redis.log_path().exists());
}

#[tokio::test]
async fn restarted_redis_keeps_its_port_and_comes_back_empty() {
    let mut redis = RedisServer::start().await;
    let port = redis.port();
    redis_command(port, &["SET", "k", "v"]).await;

    redis.stop().await;
    assert!(!accepts_connections(port).await, "stopped server still listens");
    redis.restart().await;

    assert_eq!(redis.port(), port);
    assert_eq!(redis_command(port, &["GET", "k"]).await, "$-1\r\n");
}

#[tokio::test]
async fn killed_redis_restarts_empty() {
    let mut redis = RedisServer::start().await;
    redis_command(redis.port(), &["SET", "k", "v"]).await;

    redis.kill().await;
    assert!(!accepts_connections(redis.port()).await, "killed server still listens");
    redis.restart().await;

    assert_eq!(redis_command(redis.port(), &["DBSIZE"]).await, ":0\r\n");
}

#[tokio::test]
async fn dropped_redis_stops_listening() {
    let redis = RedisServer::start().await;
    let port = redis.port();

    drop(redis);

    assert!(!accepts_connections(port).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_servers_start_in_parallel() {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        set.spawn(RedisServer::start());
    }
    let mut servers = Vec::new();
    while let Some(server) = set.join_next().await {
        servers.push(server.unwrap());
    }
    for redis in &servers {
        assert_eq!(redis_command(redis.port(), &["PING"]).await, "+PONG\r\n");
    }
}
