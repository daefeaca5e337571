//! The committed `orders-api/openapi.json` is the document the API serves. After changing a
//! route, a body or a response, regenerate it with
//! `UPDATE_OPENAPI=1 cargo test -p orders-api --test openapi`.

mod support;

use std::path::Path;

use support::Api;

#[tokio::test]
async fn the_committed_document_is_the_served_one() {
    // The document needs no database: nothing listens on port 1.
    let api = Api::start("postgres://postgres@127.0.0.1:1/postgres").await;
    let served = api.get("/openapi.json").await;
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.header("content-type"), Some("application/json"));
    let document = served.json();
    assert_eq!(document["openapi"], "3.1.0");
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    // The test's own switch, not configuration of the code under test.
    if std::env::var_os("UPDATE_OPENAPI").is_some_and(|v| v == "1") {
        std::fs::write(&committed, &served.body).expect("write orders-api/openapi.json");
        return;
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        on_disk == served.body,
        "orders-api/openapi.json differs from the document the API serves; regenerate it with\n  \
         UPDATE_OPENAPI=1 cargo test -p orders-api --test openapi\nand commit it"
    );
    // Every route the router has is in the document.
    for (path, method) in [
        ("/orders", "get"),
        ("/orders", "post"),
        ("/orders/{id}", "get"),
        ("/orders/{id}", "put"),
        ("/orders/{id}", "patch"),
        ("/orders/{id}", "delete"),
        ("/orders/{id}/amount", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(document["paths"][path][method].is_object(), "{method} {path} is not documented");
    }
}
