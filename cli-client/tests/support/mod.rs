//! Shared by cli-client's integration tests: an auth-on ws-server, test tokens, running the
//! shipped binary to completion, and a private certificate authority for wss://.
#![allow(dead_code, unreachable_pub, reason = "each test file uses a different part")]

pub mod tls;

use std::{collections::HashMap, process::Stdio, time::Duration};

use e2e::Service;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use protocol::retry::RetryPolicy;
use serde_json::{Value, json};
use tokio::process::Command;

/// The HS256 secret of the auth-on test servers (at least 32 bytes, as the server requires).
pub const SECRET: &str = "cli-test-only-hs256-secret-0123456789abcdef";

/// A ws-server on `redis_url` with HS256 auth on ([`SECRET`]), ready.
pub async fn auth_ws(redis_url: &str) -> Service {
    let vars: HashMap<&str, String> =
        [("REDIS_URL", redis_url.to_owned()), ("WS_JWT_SECRET", SECRET.to_owned())].into_iter().collect();
    let mut config = ws_server::Config::from_lookup(|k| vars.get(k).cloned()).expect("a valid test configuration");
    config.retry = RetryPolicy {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    config.keepalive_interval = Duration::from_secs(1);
    let ws = e2e::spawn_ws(config).await;
    ws.wait_ready().await;
    ws
}

/// An HS256 token for `sub`, valid for an hour, with `extra` claims (`filter`, `select`).
pub fn token(sub: &str, extra: Value) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let mut claims = json!({"sub": sub, "exp": exp});
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("an HMAC key");
    encode(&Header::new(Algorithm::HS256), &claims, &key).expect("claims serialize")
}

/// An HS256 token without `sub`, valid for an hour.
pub fn token_without_sub() -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let key = EncodingKey::from_secret(SECRET.as_bytes()).expect("an HMAC key");
    encode(&Header::new(Algorithm::HS256), &json!({"exp": exp}), &key).expect("claims serialize")
}

/// The outcome of a finished `cli-client` run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cli-client args…` with `env` to completion (at most 30 s) and no terminal.
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cli-client"));
    command.args(args).stdin(Stdio::null()).env_remove("ORDERS_TOKEN").env_remove("SSL_CERT_FILE").kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("cli-client finishes within 30 s")
        .expect("cli-client runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
