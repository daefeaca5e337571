//! The `/orders` routes against a real PostgreSQL: every route's happy path, every error
//! status, concurrent amount additions, a missing table, metrics and shutdown.

mod support;

use serde_json::{Value, json};
use support::{Api, apply_schema};
use testkit::{PgServer, wait_until};

fn order(customer: &str, product: &str) -> String {
    json!({ "customer_name": customer, "product_name": product }).to_string()
}

#[tokio::test]
async fn every_route_works() {
    let (_pg, api) = Api::with_database().await;

    // POST: defaults from the table, 201 with a Location.
    let created = api.send("POST", "/orders", &order("Ada", "Lamp")).await;
    assert_eq!(created.status, 201, "{created:?}");
    let ada = created.json();
    let id = ada["id"].as_i64().expect("an id");
    assert_eq!(created.header("location"), Some(format!("/orders/{id}").as_str()));
    assert_eq!(created.header("content-type"), Some("application/json"));
    assert_eq!((ada["status"].as_str(), ada["amount"].as_f64()), (Some("pending"), Some(0.0)));
    assert!(ada["created_at"].is_string() && ada["updated_at"].is_string(), "{ada}");

    // POST with a chosen id and every member; a later id-less insert does not collide with it.
    let chosen = api
        .send(
            "POST",
            "/orders",
            r#"{"id": 1000, "customer_name": "Bob", "product_name": "Desk", "status": "paid", "amount": 12}"#,
        )
        .await;
    assert_eq!(chosen.status, 201, "{chosen:?}");
    assert_eq!(chosen.header("location"), Some("/orders/1000"));
    assert_eq!(chosen.json()["amount"], json!(12.0));
    let after = api.send("POST", "/orders", &order("Cy", "Chair")).await;
    assert_eq!(after.status, 201, "{after:?}");
    assert!(after.json()["id"].as_i64().unwrap() > 1000, "{after:?}");

    // GET one.
    let read = api.get(&format!("/orders/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), ada);

    // PATCH and PUT: only the members given change.
    let patched = api.send("PATCH", &format!("/orders/{id}"), r#"{"status": "shipped"}"#).await;
    assert_eq!(patched.status, 200, "{patched:?}");
    let p = patched.json();
    assert_eq!((p["status"].as_str(), p["customer_name"].as_str()), (Some("shipped"), Some("Ada")));
    let put = api.send("PUT", &format!("/orders/{id}"), r#"{"product_name": "Big lamp", "amount": 30}"#).await;
    assert_eq!(put.status, 200, "{put:?}");
    let p = put.json();
    assert_eq!((p["product_name"].as_str(), p["status"].as_str()), (Some("Big lamp"), Some("shipped")));
    assert_eq!(p["amount"], json!(30.0));
    let unchanged = api.send("PATCH", &format!("/orders/{id}"), "{}").await;
    assert_eq!((unchanged.status, unchanged.json()), (200, p.clone()), "an empty patch changes nothing");

    // The amount, added to (and taken from) in place.
    let added = api.send("POST", &format!("/orders/{id}/amount"), r#"{"amount": 5}"#).await;
    assert_eq!(added.status, 200, "{added:?}");
    assert_eq!(added.json()["amount"], json!(35.0));
    let taken = api.send("POST", &format!("/orders/{id}/amount"), r#"{"amount": -10}"#).await;
    assert_eq!(taken.json()["amount"], json!(25.0));

    // GET the list: newest update first by default; equality filters; limit; another order.
    let names = |response: support::Response| -> Vec<String> {
        assert_eq!(response.status, 200, "{response:?}");
        response.json().as_array().unwrap().iter().map(|o| o["customer_name"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(names(api.get("/orders").await), ["Ada", "Cy", "Bob"]);
    assert_eq!(names(api.get("/orders?status=paid").await), ["Bob"]);
    assert_eq!(names(api.get("/orders?customer_name=Cy").await), ["Cy"]);
    assert_eq!(names(api.get("/orders?status=pending&customer_name=Ada").await), Vec::<String>::new());
    assert_eq!(names(api.get("/orders?limit=2").await), ["Ada", "Cy"]);
    assert_eq!(names(api.get("/orders?order=id.asc").await), ["Ada", "Bob", "Cy"]);
    assert_eq!(names(api.get("/orders?order=amount.desc&limit=1").await), ["Ada"]);

    // DELETE: 204, then it is gone.
    let deleted = api.request_delete(id).await;
    assert_eq!((deleted.status, deleted.body.as_str()), (204, ""));
    assert_eq!(api.get(&format!("/orders/{id}")).await.status, 404);
    assert_eq!(names(api.get("/orders").await), ["Cy", "Bob"]);

    api.stop().await.expect("clean shutdown");
}

trait Delete {
    async fn request_delete(&self, id: i64) -> support::Response;
}

impl Delete for Api {
    async fn request_delete(&self, id: i64) -> support::Response {
        support::request(self.addr, "DELETE", &format!("/orders/{id}"), None).await
    }
}

#[tokio::test]
async fn bad_requests_get_problems_never_500() {
    let (_pg, api) = Api::with_database().await;
    let id = api.send("POST", "/orders", &order("Ada", "Lamp")).await.json()["id"].as_i64().unwrap();
    let one = format!("/orders/{id}");
    let amount = format!("/orders/{id}/amount");

    // 404: unknown ids, on every route that takes one; unknown paths.
    for (method, path, body) in [
        ("GET", "/orders/424242", None),
        ("PUT", "/orders/424242", Some(r#"{"status":"x"}"#)),
        ("PATCH", "/orders/424242", Some(r#"{"status":"x"}"#)),
        ("DELETE", "/orders/424242", None),
        ("POST", "/orders/424242/amount", Some(r#"{"amount":1}"#)),
    ] {
        let p = support::request(api.addr, method, path, body).await.problem(404);
        assert_eq!(p["detail"], "no order has id 424242", "{method} {path}");
    }
    api.get("/nothing/here").await.problem(404);

    // 400: amounts that are not integers, bad JSON, a bad id or query.
    for (path, body) in [
        (amount.as_str(), r#"{"amount": 1.5}"#),
        (amount.as_str(), r#"{"amount": "1"}"#),
        ("/orders", r#"{"customer_name":"A","product_name":"B","amount":2.25}"#),
    ] {
        let p = api.send("POST", path, body).await.problem(400);
        assert_eq!((p["detail"].as_str(), p["field"].as_str()), (Some("amount must be an integer"), Some("amount")));
    }
    api.send("PATCH", &one, r#"{"amount": 1e-3}"#).await.problem(400);
    api.send("POST", "/orders", "{not json").await.problem(400);
    api.send("POST", &amount, "").await.problem(400);
    let p = api.get("/orders/abc").await.problem(400);
    assert_eq!(p["field"], "id");
    let p = api.get("/orders?limit=5000").await.problem(400);
    assert_eq!(p["field"], "limit");
    api.get("/orders?order=password.desc").await.problem(400);
    api.get("/orders?colour=red").await.problem(400);

    // 422: unknown members, wrong types, missing members — each named.
    for (method, path, body, field) in [
        ("POST", "/orders", r#"{"customer_name":"A","product_name":"B","colour":"red"}"#, "colour"),
        ("POST", "/orders", r#"{"customer_name":5,"product_name":"B"}"#, "customer_name"),
        ("POST", "/orders", r#"{"customer_name":"A"}"#, "product_name"),
        ("POST", "/orders", r#"{"id":"seven","customer_name":"A","product_name":"B"}"#, "id"),
        ("PATCH", one.as_str(), r#"{"status":null}"#, "status"),
        ("PATCH", one.as_str(), r#"{"id":9}"#, "id"),
        ("POST", amount.as_str(), r#"{"amount":1,"by":"me"}"#, "by"),
        ("POST", amount.as_str(), "{}", "amount"),
    ] {
        let p = api.send(method, path, body).await.problem(422);
        assert_eq!(p["field"], field, "{method} {path} {body}");
    }
    api.send("POST", "/orders", "[1, 2]").await.problem(422);

    // 422: check constraints, named; a value out of the column's range.
    for (method, path, body, constraint) in [
        ("POST", amount.as_str(), r#"{"amount":-1}"#, "orders_amount_not_negative"),
        ("PATCH", one.as_str(), r#"{"status":"  "}"#, "orders_status_not_blank"),
        ("POST", "/orders", r#"{"customer_name":"","product_name":"B"}"#, "orders_customer_name_not_blank"),
    ] {
        let p = api.send(method, path, body).await.problem(422);
        assert_eq!(p["constraint"], constraint, "{method} {path} {body}");
        assert!(p["detail"].as_str().unwrap().contains(constraint), "{p}");
    }
    api.send("POST", &amount, r#"{"amount": 9223372036854775807}"#).await.problem(422);

    // 409: a duplicate id.
    let body = json!({"id": id, "customer_name": "B", "product_name": "C"}).to_string();
    let p = api.send("POST", "/orders", &body).await.problem(409);
    assert_eq!(p["field"], "id");

    // 413: a body over API_MAX_BODY_BYTES (1 KiB here).
    let big = json!({"customer_name": "A".repeat(2000), "product_name": "B"}).to_string();
    api.send("POST", "/orders", &big).await.problem(413);

    // 405: a method the path does not take.
    api.send("DELETE", "/orders", "").await.problem(405);

    // None of that changed the order.
    let still = api.get(&one).await.json();
    assert_eq!((still["amount"].as_f64(), still["status"].as_str()), (Some(0.0), Some("pending")));
}

#[tokio::test]
async fn fifty_concurrent_additions_all_count() {
    let (_pg, api) = Api::with_database().await;
    let created = api.send("POST", "/orders", r#"{"customer_name":"Ada","product_name":"Lamp","amount":7}"#).await;
    let path = format!("/orders/{}/amount", created.json()["id"]);
    let additions = (0..50).map(|_| {
        let (addr, path) = (api.addr, path.clone());
        tokio::spawn(async move { support::request(addr, "POST", &path, Some(r#"{"amount": 1}"#)).await.status })
    });
    for addition in additions.collect::<Vec<_>>() {
        assert_eq!(addition.await.unwrap(), 200);
    }
    let id = created.json()["id"].as_i64().unwrap();
    assert_eq!(api.get(&format!("/orders/{id}")).await.json()["amount"], json!(57.0));
}

#[tokio::test]
async fn without_the_orders_table_readyz_says_so_and_routes_answer_503() {
    let pg = PgServer::start().await;
    let api = Api::start(&pg.url()).await;
    wait_until(support::WAIT, "postgres checked", || async {
        api.get("/readyz").await.json()["checks"]["postgres"] == "up"
    })
    .await;
    let ready = api.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["checks"]["orders_table"], "down", "{ready:?}");
    let p = api.get("/orders").await.problem(503);
    assert!(p["detail"].as_str().unwrap().contains("orders table"), "{p}");
    api.send("POST", "/orders", &order("Ada", "Lamp")).await.problem(503);

    // Once the publisher (here: the schema) has run, the API is ready without a restart.
    apply_schema(&pg).await;
    api.wait_ready().await;
    assert_eq!(api.send("POST", "/orders", &order("Ada", "Lamp")).await.status, 201);
}

#[tokio::test]
async fn postgres_down_is_not_ready_and_503() {
    let (mut pg, api) = Api::with_database().await;
    pg.stop().await;
    wait_until(support::WAIT, "not ready", || async { api.get("/readyz").await.status == 503 }).await;
    api.get("/orders").await.problem(503);
    pg.restart().await;
    api.wait_ready().await;
    assert_eq!(api.get("/orders").await.status, 200);
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let (_pg, api) = Api::with_database().await;
    api.send("POST", "/orders", &order("Ada", "Lamp")).await;
    api.get("/orders/1").await;
    api.get("/orders/999").await;
    api.get("/orders/998").await;
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    for line in [
        r#"api_requests_total{method="POST",route="/orders",status="201"} 1"#,
        r#"api_requests_total{method="GET",route="/orders/{id}",status="200"} 1"#,
        r#"api_requests_total{method="GET",route="/orders/{id}",status="404"} 2"#,
        "api_postgres_up 1",
        "api_orders_table_up 1",
    ] {
        assert!(metrics.body.lines().any(|l| l == line), "{line:?} not in\n{}", metrics.body);
    }
    assert_eq!(api.get("/healthz").await.body, "ok\n");
    let _: Value = api.get("/readyz").await.json();
}

#[tokio::test]
async fn postgrest_filters_select_rows_with_bound_values() {
    let (_pg, api) = Api::with_database().await;
    for (customer, product, status, amount) in
        [("Ada", "Desk lamp", "paid", 150), ("Bob", "Desk", "pending", 99), ("Cy", "Chair", "paid", 100)]
    {
        let body = json!({"customer_name": customer, "product_name": product, "status": status, "amount": amount});
        assert_eq!(api.send("POST", "/orders", &body.to_string()).await.status, 201);
    }
    let names = |response: support::Response| -> Vec<String> {
        assert_eq!(response.status, 200, "{response:?}");
        let mut names: Vec<String> = response
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["customer_name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    };
    for (query, expected) in [
        ("amount=gte.100", &["Ada", "Cy"][..]),
        ("amount=lt.100", &["Bob"]),
        ("status=eq.paid&amount=gt.100", &["Ada"]),
        ("status=not.eq.paid", &["Bob"]),
        ("customer_name=in.(Ada,Bob)", &["Ada", "Bob"]),
        ("id=in.()", &[]),
        ("id=not.in.()", &["Ada", "Bob", "Cy"]),
        ("product_name=like.Desk*", &["Ada", "Bob"]),
        ("product_name=ilike.*LAMP", &["Ada"]),
        ("product_name=is.not_null", &["Ada", "Bob", "Cy"]),
        ("created_at=gte.2000-01-01T00:00:00Z", &["Ada", "Bob", "Cy"]),
        // Quotes and SQL in a value are data, not SQL.
        ("customer_name=eq.x'%20OR%20'1'='1", &[]),
        ("status=paid'%3B%20DROP%20TABLE%20orders%3B--", &[]),
    ] {
        assert_eq!(names(api.get(&format!("/orders?{query}")).await), expected, "{query}");
    }
    // A literal that is not of the column's type is the client's error.
    api.get("/orders?id=eq.abc").await.problem(422);
    api.get("/orders?amount=gte.").await.problem(400);
    assert_eq!(names(api.get("/orders").await).len(), 3, "the table is still there");
}

#[tokio::test]
async fn select_keeps_the_listed_columns_and_the_id() {
    let (_pg, api) = Api::with_database().await;
    let id = api.send("POST", "/orders", &order("Ada", "Lamp")).await.json()["id"].as_i64().unwrap();
    api.send("POST", "/orders", &order("Bob", "Desk")).await;
    let keys = |row: &Value| -> Vec<String> { row.as_object().unwrap().keys().cloned().collect() };

    let listed = api.get("/orders?select=status,amount").await;
    assert_eq!(listed.status, 200, "{listed:?}");
    for row in listed.json().as_array().unwrap() {
        assert_eq!(keys(row), ["status", "amount", "id"], "{row}");
    }
    let one = api.get(&format!("/orders/{id}?select=customer_name")).await.json();
    assert_eq!(one, json!({"customer_name": "Ada", "id": id}));
    assert_eq!(keys(&api.get(&format!("/orders/{id}?select=*")).await.json()).len(), 7);
    // Filters may test columns that are not selected.
    let paid = api.get("/orders?select=id&customer_name=Bob").await.json();
    assert_eq!(paid.as_array().unwrap().len(), 1, "{paid}");

    for path in ["/orders?select=id,password".to_owned(), format!("/orders/{id}?select=password")] {
        let p = api.get(&path).await.problem(400);
        assert_eq!(p["field"], "select", "{path}");
        assert!(p["detail"].as_str().unwrap().contains("\"password\""), "{p}");
    }
    api.get("/orders?select=").await.problem(400);
    api.get(&format!("/orders/{id}?limit=1")).await.problem(400);
}

/// The `rel="next"` URL of a response's `Link` header.
fn next_link(response: &support::Response) -> Option<String> {
    let link = response.header("link")?;
    let (url, rel) = link.strip_prefix('<')?.split_once('>')?;
    assert_eq!(rel, "; rel=\"next\"", "{link}");
    Some(url.to_owned())
}

/// Walks every page of `first`, calling `between` with the id of each page's first row before
/// the next page, and returns the rows seen, in order.
async fn walk(api: &Api, first: &str, mut between: impl AsyncFnMut(i64)) -> Vec<Value> {
    let (mut seen, mut path) = (Vec::new(), Some(first.to_owned()));
    while let Some(page) = path {
        let response = api.get(&page).await;
        assert_eq!(response.status, 200, "{page}: {response:?}");
        let rows = response.json().as_array().unwrap().clone();
        path = next_link(&response);
        assert!(!rows.is_empty(), "{page} led to an empty page");
        let first_id = rows[0]["id"].as_i64().unwrap();
        seen.extend(rows);
        between(first_id).await;
        assert!(seen.len() < 1000, "{first}: the walk does not end");
    }
    seen
}

#[tokio::test]
async fn pages_walked_while_rows_are_written_show_every_row_once() {
    let (pg, api) = Api::with_database().await;
    // Legacy tables may hold NULLs: let status hold some, so the walk crosses them.
    pg.psql("postgres", "ALTER TABLE orders ALTER COLUMN status DROP NOT NULL").await;
    pg.psql(
        "postgres",
        "INSERT INTO orders (customer_name, product_name, status, amount) \
         SELECT 'c' || (i % 7), 'p' || i, CASE WHEN i % 5 = 0 THEN NULL ELSE 's' || (i % 3) END, i % 4 \
         FROM generate_series(1, 47) i",
    )
    .await;
    let before: Vec<i64> = api
        .get("/orders?limit=1000&order=id.asc")
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(before.len(), 47);

    for order in [
        "",
        "&order=updated_at.desc",
        "&order=id.asc",
        "&order=amount.desc",
        "&order=amount.asc",
        "&order=status.asc",
        "&order=status.desc",
        "&order=customer_name.desc",
        "&order=created_at.asc",
    ] {
        // Between pages: a new order, and an update of one already seen (other rows than
        // those a page still has to show).
        let mut written = 0;
        let seen = walk(&api, &format!("/orders?limit=6{order}"), async |seen_id| {
            written += 1;
            let body = json!({"customer_name": "new", "product_name": format!("n{written}"), "amount": 2});
            assert_eq!(api.send("POST", "/orders", &body.to_string()).await.status, 201);
            let touched = api.send("PATCH", &format!("/orders/{seen_id}"), r#"{"product_name": "touched"}"#).await;
            assert_eq!(touched.status, 200, "{touched:?}");
        })
        .await;
        let ids: Vec<i64> = seen.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "{order}: a row seen twice: {ids:?}");
        for id in &before {
            assert!(ids.contains(id), "{order}: row {id} never seen");
        }
        // Pages follow the order they were asked for, across page boundaries too (but by
        // updated_at, which the updates moved on).
        let expected: Vec<i64> = {
            let all = api.get(&format!("/orders?limit=1000{order}")).await.json();
            all.as_array().unwrap().iter().map(|r| r["id"].as_i64().unwrap()).filter(|id| ids.contains(id)).collect()
        };
        if !order.is_empty() && order != "&order=updated_at.desc" {
            assert_eq!(ids, expected, "{order}");
        }
    }
}

#[tokio::test]
async fn a_cursor_from_elsewhere_or_edited_is_a_400() {
    let (_pg, api) = Api::with_database().await;
    for n in 0..3 {
        api.send("POST", "/orders", &order("Ada", &format!("p{n}"))).await;
    }
    let first = api.get("/orders?limit=1&order=id.asc&customer_name=Ada").await;
    let next = next_link(&first).expect("a next page");
    assert!(next.starts_with("/orders?limit=1&order=id.asc&customer_name=Ada&cursor="), "{next}");
    let token = next.rsplit_once("cursor=").unwrap().1.to_owned();
    let last = api.get("/orders?limit=3&order=id.asc").await;
    assert_eq!(next_link(&last), None, "no link after the last page");

    let mut edited = token.clone().into_bytes();
    edited[4] = if edited[4] == b'A' { b'B' } else { b'A' };
    let edited = String::from_utf8(edited).unwrap();
    for path in [
        format!("/orders?limit=1&order=id.asc&customer_name=Ada&cursor={edited}"),
        format!("/orders?limit=1&order=id.asc&customer_name=Ada&cursor={}", &token[1..]),
        format!("/orders?limit=1&order=id.desc&customer_name=Ada&cursor={token}"),
        format!("/orders?limit=1&order=id.asc&cursor={token}"),
        "/orders?cursor=".to_owned(),
    ] {
        let p = api.get(&path).await.problem(400);
        assert_eq!(p["field"], "cursor", "{path}");
    }
    // The same query with another limit or select may go on with it.
    let response = api.get(&format!("/orders?order=id.asc&customer_name=Ada&select=id&cursor={token}")).await;
    assert_eq!(response.json().as_array().unwrap().len(), 2, "{response:?}");
}
