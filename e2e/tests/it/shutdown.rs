//! Graceful shutdown: services stop within their grace period and close clients cleanly.

use std::time::Duration;

use e2e::{System, WAIT, WsClient};

#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_finishes_within_the_grace_period() {
    let mut system = System::start(2).await;
    let mut plain = WsClient::connect(&system.ws[0].ws_url()).await;
    let (mut typed, _) = WsClient::connect_protocol(&system.ws[0].ws_url()).await;
    let (mut other_replica, _) = WsClient::connect_protocol(&system.ws[1].ws_url()).await;

    let replica = system.ws.remove(0);
    let took = replica.stop().await;
    assert!(took < Duration::from_secs(3), "ws-server stopped in {took:?}");
    for client in [&mut plain, &mut typed] {
        let (code, reason) = client.expect_close(WAIT).await;
        assert_eq!(code, 1001, "{reason}");
    }

    // The other replica is untouched and still delivers.
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Still', 'Here')").await;
    assert_eq!(other_replica.next_json().await["order"]["customer_name"], "Still");

    let took = system.publisher.stop().await;
    assert!(took < Duration::from_secs(3), "publisher stopped in {took:?}");
}
