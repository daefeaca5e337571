//! Subscriptions end to end (docs/protocol.md, "Additions of protocol 1.1"): filters, select
//! and table on real rows written with SQL, rows entering and leaving a view, snapshots and
//! resumes of a filtered view, several subscriptions on one connection, refusals before the
//! upgrade, and many subscriptions on one replica. What a view should hold and receive is
//! always asked of PostgreSQL (`e2e::views`), never re-derived from the filter syntax.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use e2e::{
    Rng, Service, System, WAIT, WsClient, http_get, spawn_ws,
    views::{Fold, deliveries, expected, pos, row_id, sql_view, until_pong, upgrade_refusal, url},
    ws_config,
};
use futures_util::{StreamExt, future::join_all, stream};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{sync::watch, task::JoinHandle, time::timeout};

async fn pool(system: &System) -> PgPool {
    PgPoolOptions::new().max_connections(4).connect(&system.pg.url()).await.expect("connect to PostgreSQL")
}

/// Runs `sql` (one or more statements); returns the rows it changed, which is the number of
/// events it makes (the trigger fires for each row).
async fn exec(db: &PgPool, sql: &str) -> usize {
    let done = sqlx::raw_sql(sql).execute(db).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    usize::try_from(done.rows_affected()).expect("fits")
}

/// Lets `amount` be NULL and adds a nullable text column, so views can be tested on NULLs.
async fn nullable_columns(db: &PgPool) {
    exec(db, "ALTER TABLE orders ALTER COLUMN amount DROP NOT NULL; ALTER TABLE orders ADD COLUMN note TEXT").await;
}

/// A protocol connection (`?protocol=orders.v1`) with `params`; its `hello` is read.
async fn open(base: &str, params: &[(&str, &str)]) -> WsClient {
    let mut all = vec![("protocol", "orders.v1")];
    all.extend_from_slice(params);
    let mut client = WsClient::connect(&url(base, &all)).await;
    let hello = client.next_json().await;
    assert_eq!(hello["type"], "hello", "{hello}");
    client
}

/// [`open`] with `snapshot=true`; returns the client (live, after `subscribed`) and its fold.
async fn open_snapshot(base: &str, params: &[(&str, &str)], name: &str) -> (WsClient, Fold) {
    let mut all = params.to_vec();
    all.push(("snapshot", "true"));
    let mut client = open(base, &all).await;
    let mut fold = Fold::new(name);
    for frame in client.frames_until("subscribed").await {
        fold.apply(&frame);
    }
    assert!(fold.snapshot_at.is_some(), "{name}: a snapshot with a position before subscribed");
    (client, fold)
}

/// `filter=…` parameters, one per predicate.
fn filters<'a>(predicates: &[&'a str]) -> Vec<(&'static str, &'a str)> {
    predicates.iter().map(|p| ("filter", *p)).collect()
}

/// Reads frames into `fold` until `finish` turns true, then up to a barrier (`until_pong`).
/// `progress` gets the number of events applied after each one.
fn follow(
    mut client: WsClient,
    mut fold: Fold,
    mut finish: watch::Receiver<bool>,
    progress: Option<watch::Sender<usize>>,
) -> JoinHandle<Fold> {
    tokio::spawn(async move {
        loop {
            if *finish.borrow_and_update() {
                for frame in until_pong(&mut client, "finish").await {
                    fold.apply(&frame);
                }
                return fold;
            }
            tokio::select! {
                _ = finish.changed() => {}
                frame = client.next_json_within(Duration::from_millis(200)) => {
                    if let Some(frame) = frame {
                        fold.apply(&frame);
                        if let Some(progress) = &progress {
                            progress.send_replace(fold.events.len());
                        }
                    }
                }
            }
        }
    })
}

/// An event's `old` row (absent or `null` for INSERT and DELETE).
fn old(event: &Value) -> Option<&Value> {
    event.get("old").filter(|old| !old.is_null())
}

/// Checks a fold of a view of `condition` against PostgreSQL: the events after its snapshot
/// are exactly those `expected` says (of `all`, every event as an unfiltered client got it,
/// and with the same rows), it made no impossible step, and it holds what the query returns.
async fn check_fold(db: &PgPool, fold: &Fold, all: &[Value], condition: &str) {
    let name = &fold.name;
    assert!(fold.violations.is_empty(), "{name}: {:#?}", fold.violations);
    let after: Vec<Value> = all.iter().filter(|e| fold.snapshot_at.is_none_or(|s| pos(e) > s)).cloned().collect();
    assert_eq!(deliveries(&fold.events), expected(db, &after, condition).await, "{name}: the events of {condition}");
    let by_pos: BTreeMap<u64, &Value> = all.iter().map(|e| (pos(e), e)).collect();
    for event in &fold.events {
        let original = by_pos[&pos(event)];
        assert_eq!(event["order"], original["order"], "{name}: the row as written");
        assert_eq!(old(event), old(original), "{name}: the old row as written");
        assert_eq!(event["id"], original["id"], "{name}");
    }
    assert_eq!(fold.rows, sql_view(db, condition).await, "{name}: the fold is SELECT … WHERE {condition}");
}

// ---------------------------------------------------------------------------------------------
// 1. Every operator

const ROWS: &str = "INSERT INTO orders (customer_name, product_name, status, amount, note) VALUES
    ('Ada', 'Lamp', 'pending', 25.50, NULL),
    ('ada', 'Desk', 'shipped', 100, 'gift'),
    ('Bob', 'Widget', 'pending', 100.00, ''),
    ('Bob, Jr.', 'Premium Widget', 'on hold', NULL, 'rush, please'),
    ('Zoë', 'Chair', 'done', 99.99, NULL),
    ('Émile', 'widget', 'pending', 100.5, '50% off'),
    ('carol', 'Lamp', 'shipped', 0, 'x'),
    ('Dan', 'Sofa', 'pending', 1000, NULL),
    ('Eve (admin)', 'Widget Pro', 'void', NULL, '*starred*'),
    ('O''Neil', 'Table', 'pending', 12.34, 'b'),
    ('Mallory', 'Widget', 'shipped', 250, NULL),
    ('Bobby', 'Lamp', 'done', 100.01, 'a'),
    ('A&B+C #1', 'Mug', 'on hold', 7, 'x')";

/// Changes that move rows into and out of most views, one statement each.
const CHANGES: &[&str] = &[
    "INSERT INTO orders (customer_name, product_name, status, amount, note) VALUES
        ('Ada', 'Lamp', 'pending', 100, NULL), ('Zed', 'Widget', 'on hold', NULL, 'new'),
        ('Bob, Jr.', 'Gadget', 'done', 5, ''), ('A&B+C #1', 'Cup', 'void', 1e3, '*')",
    "UPDATE orders SET status = 'shipped' WHERE customer_name = 'Ada' AND status = 'pending'",
    "UPDATE orders SET amount = NULL WHERE customer_name = 'Dan'",
    "UPDATE orders SET amount = 100 WHERE customer_name = 'Bob, Jr.' AND amount IS NULL",
    "UPDATE orders SET note = 'x' WHERE customer_name = 'Zoë'",
    "UPDATE orders SET note = NULL WHERE customer_name = 'carol'",
    "UPDATE orders SET customer_name = 'Bob' WHERE customer_name = 'Bobby'",
    "UPDATE orders SET customer_name = 'Zoe' WHERE customer_name = 'O''Neil'",
    "UPDATE orders SET product_name = product_name WHERE customer_name = 'carol'",
    "UPDATE orders SET status = 'pending', amount = 250 WHERE customer_name = 'Eve (admin)'",
    "DELETE FROM orders WHERE customer_name = 'Mallory'",
    "DELETE FROM orders WHERE customer_name = 'ada'",
];

/// Each filter (PostgREST syntax, ANDed) and the same condition in SQL.
const OPERATORS: &[(&[&str], &str)] = &[
    (&["amount=eq.100"], "amount = 100"),
    (&["amount=eq.1e2"], "amount = 1e2"),
    (&["amount=neq.100"], "amount <> 100"),
    (&["amount=lt.100"], "amount < 100"),
    (&["amount=lte.100"], "amount <= 100"),
    (&["amount=gt.100"], "amount > 100"),
    (&["amount=gte.99.99"], "amount >= 99.99"),
    (&["id=gt.4"], "id > 4"),
    (&["customer_name=eq.Ada"], "customer_name = 'Ada'"),
    (&["customer_name=eq.O'Neil"], "customer_name = 'O''Neil'"),
    (&["customer_name=eq.A&B+C #1"], "customer_name = 'A&B+C #1'"),
    (&["customer_name=neq.Ada"], "customer_name <> 'Ada'"),
    (&["customer_name=lt.Bob"], "customer_name < 'Bob'"),
    (&["customer_name=lte.Bob"], "customer_name <= 'Bob'"),
    (&["customer_name=gt.Bob"], "customer_name > 'Bob'"),
    (&["customer_name=gte.Zoë"], "customer_name >= 'Zoë'"),
    (&["customer_name=in.(Ada,\"Bob, Jr.\",Zoë)"], "customer_name IN ('Ada', 'Bob, Jr.', 'Zoë')"),
    (&["status=in.(pending,\"on hold\")"], "status IN ('pending', 'on hold')"),
    (&["amount=in.(0,100,250)"], "amount IN (0, 100, 250)"),
    (&["status=not.in.(done,void)"], "NOT (status IN ('done', 'void'))"),
    (&["amount=is.null"], "amount IS NULL"),
    (&["amount=is.not_null"], "amount IS NOT NULL"),
    (&["note=is.null"], "note IS NULL"),
    (&["note=eq."], "note = ''"),
    (&["note=neq.x"], "note <> 'x'"),
    (&["note=like.\\**"], "note LIKE '*%'"),
    (&["customer_name=like.B*"], "customer_name LIKE 'B%'"),
    (&["product_name=like.*Widget*"], "product_name LIKE '%Widget%'"),
    (&["product_name=ilike.*widget"], "product_name ILIKE '%widget'"),
    (&["customer_name=ilike.b_b*"], "customer_name ILIKE 'b_b%'"),
    (&["status=not.eq.pending"], "NOT (status = 'pending')"),
    (&["amount=not.gt.100"], "NOT (amount > 100)"),
    (&["note=not.like.*x*"], "NOT (note LIKE '%x%')"),
    (&["status=eq.pending", "amount=gte.100"], "status = 'pending' AND amount >= 100"),
    (&["customer_name=not.like.*o*", "amount=lt.1000"], "NOT (customer_name LIKE '%o%') AND amount < 1000"),
    (&[], "true"),
];

#[tokio::test]
async fn every_operator_selects_the_rows_postgresql_selects_in_the_snapshot_and_live() {
    let system = System::start(1).await;
    let db = pool(&system).await;
    nullable_columns(&db).await;
    let ws = &system.ws[0];
    let (mut all, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    let seeded = exec(&db, ROWS).await;
    all.events(seeded).await;

    // One connection per filter, opened at once; half at `/`, half at `/ws`.
    let root = format!("ws://{}/", ws.addr);
    let opened = join_all(OPERATORS.iter().enumerate().map(|(i, (predicates, condition))| {
        let base = if i % 2 == 0 { ws.ws_url() } else { root.clone() };
        async move { open_snapshot(&base, &filters(predicates), condition).await }
    }))
    .await;
    let table = sql_view(&db, "true").await;
    for ((predicates, condition), (_, fold)) in OPERATORS.iter().zip(&opened) {
        let want = sql_view(&db, condition).await;
        assert_eq!(fold.rows, want, "the snapshot of {predicates:?} is SELECT … WHERE {condition}");
        if !predicates.is_empty() {
            assert!(
                !want.is_empty() && want.len() < table.len(),
                "{condition}: the test data selects some rows, not all"
            );
        }
    }

    let mut changed = 0;
    for change in CHANGES {
        changed += exec(&db, change).await;
    }
    let events = all.events(changed).await;
    let folds = join_all(opened.into_iter().map(|(mut client, mut fold)| async move {
        for frame in until_pong(&mut client, "done").await {
            fold.apply(&frame);
        }
        fold
    }))
    .await;
    let (mut live, mut enters, mut leaves) = (0, 0, 0);
    for ((predicates, condition), fold) in OPERATORS.iter().zip(&folds) {
        check_fold(&db, fold, &events, condition).await;
        assert!(!fold.events.is_empty(), "{predicates:?}: the changes reach every view");
        (live, enters, leaves) = (live + fold.events.len(), enters + fold.enters, leaves + fold.leaves);
    }
    assert!(enters >= 10 && leaves >= 10, "rows entered ({enters}) and left ({leaves}) views");
    assert!(live < folds.len() * events.len(), "views got fewer events than all of them");
}

// ---------------------------------------------------------------------------------------------
// 2. Rows moving in and out

/// A random change of one row; returns the SQL. `ids` are the rows that exist.
fn random_change(rng: &mut Rng, ids: &mut Vec<i64>, next_id: &mut i64) -> String {
    const STATUSES: [&str; 3] = ["pending", "shipped", "done"];
    const AMOUNTS: [&str; 7] = ["NULL", "5", "99.99", "100", "100.00", "150", "1000"];
    let status = STATUSES[rng.below(3) as usize];
    let amount = AMOUNTS[rng.below(7) as usize];
    let kind = if ids.len() < 5 { 0 } else { rng.below(10) };
    let pick = |rng: &mut Rng, ids: &Vec<i64>| ids[rng.below(ids.len() as u64) as usize];
    match kind {
        0..=2 => {
            let id = *next_id;
            *next_id += 1;
            ids.push(id);
            format!(
                "INSERT INTO orders (id, customer_name, product_name, status, amount) VALUES ({id}, 'c{id}', 'p', '{status}', {amount})"
            )
        }
        3..=5 => format!("UPDATE orders SET status = '{status}' WHERE id = {}", pick(rng, ids)),
        6..=7 => format!("UPDATE orders SET amount = {amount} WHERE id = {}", pick(rng, ids)),
        8 => format!("UPDATE orders SET status = '{status}', amount = {amount} WHERE id = {}", pick(rng, ids)),
        _ => {
            let i = rng.below(ids.len() as u64) as usize;
            format!("DELETE FROM orders WHERE id = {}", ids.swap_remove(i))
        }
    }
}

#[tokio::test]
async fn folding_clients_hold_exactly_their_rows_as_rows_move_in_and_out() {
    let system = System::start(1).await;
    let db = pool(&system).await;
    nullable_columns(&db).await;
    let ws = &system.ws[0];
    let (mut all, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    let mut rng = Rng(0x5eed_f01d);
    let (mut ids, mut next_id) = (Vec::new(), 1);
    let mut seeded = 0;
    for _ in 0..20 {
        seeded += exec(&db, &random_change(&mut rng, &mut ids, &mut next_id)).await;
    }
    all.events(seeded).await;

    let views = [("status=eq.pending", "status = 'pending'"), ("amount=gte.100", "amount >= 100")];
    let mut opened = Vec::new();
    for (filter, condition) in views {
        opened.push(open_snapshot(&ws.ws_url(), &[("filter", filter)], condition).await);
    }
    // ~300 changes of one row each, some of them a few to a transaction.
    let mut changed = 0;
    while changed < 300 {
        let batch: Vec<String> = (0..=rng.below(3)).map(|_| random_change(&mut rng, &mut ids, &mut next_id)).collect();
        let sql = if batch.len() == 1 { batch[0].clone() } else { format!("BEGIN; {}; COMMIT", batch.join("; ")) };
        changed += exec(&db, &sql).await;
    }
    let events = all.events(changed).await;

    for ((_, condition), (mut client, mut fold)) in views.iter().zip(opened) {
        for frame in until_pong(&mut client, "done").await {
            fold.apply(&frame);
        }
        check_fold(&db, &fold, &events, condition).await;
        assert!(fold.enters >= 5 && fold.leaves >= 5, "{condition}: {} enters, {} leaves", fold.enters, fold.leaves);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. select

/// URL parameters.
type Params<'a> = &'a [(&'a str, &'a str)];

/// `row` with only `id` and `columns`.
fn project(row: &Value, columns: &[&str]) -> Value {
    let keep = |k: &String| k == "id" || columns.contains(&k.as_str()) || columns == ["*"];
    Value::Object(
        row.as_object().expect("a row").iter().filter(|(k, _)| keep(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
    )
}

#[tokio::test]
async fn select_sends_only_the_chosen_columns_and_always_the_id() {
    let system = System::start(1).await;
    let db = pool(&system).await;
    let ws = &system.ws[0];
    let (mut all, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    let seeded = exec(&db, "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('Ann', 'Lamp', 'pending', 10), ('Ben', 'Desk', 'shipped', 200)").await;
    all.events(seeded).await;

    // (URL parameters, the columns expected besides id, the condition of its filter)
    let cases: [(Params<'_>, &[&str], &str); 5] = [
        (&[("select", "id,status")], &["status"], "true"),
        (&[("select", "status")], &["status"], "true"),
        (&[("select", "amount"), ("filter", "status=eq.pending")], &["amount"], "status = 'pending'"),
        (&[("select", "*")], &["*"], "true"),
        (
            &[("select", "customer_name,amount,status"), ("table", "orders")],
            &["customer_name", "amount", "status"],
            "true",
        ),
    ];
    let mut clients = Vec::new();
    for (params, columns, condition) in cases {
        let (client, fold) = open_snapshot(&ws.ws_url(), params, condition).await;
        for row in fold.rows.values() {
            assert_eq!(*row, project(&sql_view(&db, &format!("id = {}", row_id(row))).await[&row_id(row)], columns));
        }
        assert_eq!(fold.ids(), sql_view(&db, condition).await.into_keys().collect::<Vec<_>>());
        clients.push((client, fold));
    }
    // The same by frame, columns as an array.
    let mut framed = open(&ws.ws_url(), &[("subscribe", "false")]).await;
    framed
        .send_json(&json!({"type": "subscribe", "id": "s", "select": ["customer_name", "amount"], "snapshot": true}))
        .await;
    let snapshot = framed.next_json().await;
    assert_eq!((snapshot["type"].as_str(), snapshot["id"].as_str()), (Some("snapshot"), Some("s")), "{snapshot}");
    for row in snapshot["rows"].as_array().unwrap() {
        let keys: BTreeSet<&str> = row["order"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(["id", "customer_name", "amount"]), "{row}");
    }
    assert_eq!(framed.next_json().await["type"], "subscribed");

    let changed = exec(
        &db,
        "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('Cy', 'Pen', 'pending', 3);
         UPDATE orders SET status = 'shipped', amount = 11 WHERE customer_name = 'Ann';
         UPDATE orders SET status = 'pending' WHERE customer_name = 'Ben';
         DELETE FROM orders WHERE customer_name = 'Cy'",
    )
    .await;
    let events = all.events(changed).await;
    let by_pos: BTreeMap<u64, &Value> = events.iter().map(|e| (pos(e), e)).collect();
    for ((_, columns, condition), (mut client, mut fold)) in cases.iter().zip(clients) {
        for frame in until_pong(&mut client, "done").await {
            fold.apply(&frame);
        }
        assert!(fold.violations.is_empty(), "{:?}", fold.violations);
        assert_eq!(deliveries(&fold.events), expected(&db, &events, condition).await, "{condition}");
        for event in &fold.events {
            let original = by_pos[&pos(event)];
            assert_eq!(event["order"], project(&original["order"], columns), "{columns:?}");
            assert_eq!(old(event).cloned(), old(original).map(|o| project(o, columns)), "{columns:?}");
        }
    }
    let frames = until_pong(&mut framed, "done").await;
    assert_eq!(frames.len(), events.len(), "{frames:?}");
    for (frame, original) in frames.iter().zip(&events) {
        assert_eq!(frame["subs"], json!(["s"]));
        assert_eq!(frame["order"], project(&original["order"], &["customer_name", "amount"]));
    }
}

// ---------------------------------------------------------------------------------------------
// 4. table

#[tokio::test]
async fn table_selects_the_events_of_one_table() {
    let system = System::start(1).await;
    let db = pool(&system).await;
    exec(
        &db,
        "CREATE TABLE other (id BIGINT PRIMARY KEY, status TEXT);
         CREATE TRIGGER other_realtime_notify AFTER INSERT OR UPDATE OR DELETE ON other
             FOR EACH ROW EXECUTE FUNCTION realtime_notify('orders_channel')",
    )
    .await;
    let ws = &system.ws[0];
    let (mut all, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    let seeded = exec(
        &db,
        "INSERT INTO orders (customer_name, product_name, status) VALUES ('Ann', 'Lamp', 'pending');
         INSERT INTO other VALUES (1, 'pending')",
    )
    .await;
    all.events(seeded).await;

    let mut orders = open(&ws.ws_url(), &[("table", "orders"), ("snapshot", "true")]).await;
    let mut other = open(&ws.ws_url(), &[("table", "other"), ("snapshot", "true")]).await;
    let mut other_pending = open(&ws.ws_url(), &[("table", "other"), ("filter", "status=eq.pending")]).await;
    let mut nothing = open(&ws.ws_url(), &[("table", "nope")]).await;
    let tables = |frame: &Value| -> Vec<String> {
        frame["rows"].as_array().unwrap().iter().map(|r| r["table"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(tables(&orders.next_json().await), ["orders"]);
    assert_eq!(tables(&other.next_json().await), ["other"]);
    for client in [&mut orders, &mut other] {
        assert_eq!(client.next_json().await["type"], "subscribed");
    }

    let changed = exec(
        &db,
        "INSERT INTO orders (customer_name, product_name, status) VALUES ('Ben', 'Desk', 'pending');
         INSERT INTO other VALUES (2, 'pending'), (3, 'done');
         UPDATE other SET status = 'done' WHERE id = 1;
         UPDATE orders SET status = 'done';
         DELETE FROM other WHERE id = 2",
    )
    .await;
    let events = all.events(changed).await;
    let of = |table: &str| -> Vec<u64> { events.iter().filter(|e| e["table"] == table).map(pos).collect() };
    assert_eq!((of("orders").len(), of("other").len()), (3, 4), "{events:?}");
    let got = |frames: Vec<Value>| -> Vec<u64> { frames.iter().filter(|f| f["type"] == "event").map(pos).collect() };
    assert_eq!(got(until_pong(&mut orders, "done").await), of("orders"));
    assert_eq!(got(until_pong(&mut other, "done").await), of("other"));
    // id 1 leaves (pending → done), 2 enters by INSERT and is deleted; 3 never matches.
    let frames = until_pong(&mut other_pending, "done").await;
    let summary: Vec<(Value, Value, Value)> =
        frames.iter().map(|f| (f["order"]["id"].clone(), f["operation"].clone(), f["view"].clone())).collect();
    assert_eq!(
        summary,
        [
            (json!(2), json!("INSERT"), Value::Null),
            (json!(1), json!("UPDATE"), json!("leave")),
            (json!(2), json!("DELETE"), Value::Null)
        ]
    );
    assert_eq!(until_pong(&mut nothing, "done").await, Vec::<Value>::new(), "no table nope: no events");
}

// ---------------------------------------------------------------------------------------------
// 5. Snapshot and filter under concurrent writes

#[tokio::test]
async fn a_filtered_snapshot_taken_during_writes_and_the_events_after_it_fold_to_the_table() {
    let system = System::start(1).await;
    let db = pool(&system).await;
    nullable_columns(&db).await;
    let ws = &system.ws[0];
    let (finish_tx, finish) = watch::channel(false);
    let (progress_tx, mut progress) = watch::channel(0);
    let (all, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    let watcher = follow(all, Fold::events_only("all"), finish.clone(), Some(progress_tx));

    // Writes until told to stop (once every view is open and a little more), a few hundred
    // changes a second, however fast the machine.
    let (stop_writes, writing) = watch::channel(false);
    let writer = tokio::spawn({
        let db = db.clone();
        async move {
            let mut rng = Rng(0xc0ffee);
            let (mut ids, mut next_id, mut changed) = (Vec::new(), 1, 0);
            let deadline = tokio::time::Instant::now() + WAIT;
            while !*writing.borrow() && tokio::time::Instant::now() < deadline {
                changed += exec(&db, &random_change(&mut rng, &mut ids, &mut next_id)).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            changed
        }
    });
    let views = [
        ("pending", "status = 'pending'"),
        ("big and not done", "amount >= 100 AND status <> 'done'"),
        ("pending, by frame", "status = 'pending'"),
    ];
    let mut readers = Vec::new();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (client, fold) = open_snapshot(&ws.ws_url(), &[("filter", "status=eq.pending")], views[0].0).await;
    readers.push(follow(client, fold, finish.clone(), None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let params = [("filter", "amount=gte.100"), ("filter", "status=neq.done")];
    let (client, fold) = open_snapshot(&ws.ws_url(), &params, views[1].0).await;
    readers.push(follow(client, fold, finish.clone(), None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Unfiltered first, live events flowing; then a `subscribe` replaces the default
    // subscription with a filtered snapshot (events before the snapshot frame are covered).
    let mut client = open(&ws.ws_url(), &[]).await;
    client.send_json(&json!({"type": "subscribe", "filter": ["status=eq.pending"], "snapshot": true})).await;
    readers.push(follow(client, Fold::new(views[2].0), finish.clone(), None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_writes.send_replace(true);

    let changed = timeout(WAIT, writer).await.expect("the writer stops").expect("the writer did not panic");
    timeout(WAIT, progress.wait_for(|n| *n >= changed)).await.expect("every event reaches the watcher").unwrap();
    finish_tx.send_replace(true);
    let all = watcher.await.unwrap();
    assert_eq!(all.events.len(), changed, "one event per change");
    let (first, last) = (pos(&all.events[0]), pos(all.events.last().unwrap()));
    for ((name, condition), reader) in views.iter().zip(readers) {
        let fold = reader.await.unwrap();
        let at = fold.snapshot_at.unwrap_or_else(|| panic!("{name}: a snapshot"));
        assert!(first <= at && at < last, "{name}: the snapshot ({at}) was taken during the writes ({first}..={last})");
        check_fold(&db, &fold, &all.events, condition).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Resume with a filter on another replica

#[tokio::test]
async fn a_filtered_client_resumes_on_another_replica_with_exactly_its_missed_events() {
    let system = System::start(2).await;
    let db = pool(&system).await;
    let (a, b) = (&system.ws[0], &system.ws[1]);
    let (mut all, _) = WsClient::connect_protocol(&a.ws_url()).await;
    let (mut all_on_b, _) = WsClient::connect_protocol(&b.ws_url()).await;
    let insert = |name: &str, status: &str| {
        format!("INSERT INTO orders (customer_name, product_name, status) VALUES ('{name}', 'p', '{status}')")
    };
    let filter = [("filter", "status=eq.pending")];
    let condition = "status = 'pending'";
    let mut changed = exec(&db, &format!("{}; {}", insert("a1", "pending"), insert("a2", "shipped"))).await;
    let mut events = all.events(changed).await;

    let (mut client, mut fold) = open_snapshot(&a.ws_url(), &filter, "resumed").await;
    changed = exec(
        &db,
        &format!(
            "{}; {}; UPDATE orders SET status = 'pending' WHERE customer_name = 'a2'; {}",
            insert("b1", "pending"),
            insert("b2", "done"),
            insert("b3", "done")
        ),
    )
    .await;
    events.extend(all.events(changed).await);
    for frame in until_pong(&mut client, "before").await {
        fold.apply(&frame);
    }
    let (epoch, last) = fold.position.clone().expect("a position");
    assert_eq!(fold.events.len(), 2, "b1 inserted, a2 entering: {:?}", fold.events);
    assert!(last < pos(events.last().unwrap()), "the last change did not match: the client resumes from before it");
    drop(client);

    // Away: some of these match, some do not; rows enter, leave, are deleted.
    changed = exec(
        &db,
        &format!(
            "{}; {}; UPDATE orders SET status = 'shipped' WHERE customer_name = 'a1';
             UPDATE orders SET status = 'pending' WHERE customer_name = 'b2';
             UPDATE orders SET product_name = 'q' WHERE customer_name = 'b3';
             DELETE FROM orders WHERE customer_name = 'b1'",
            insert("c1", "pending"),
            insert("c2", "shipped")
        ),
    )
    .await;
    events.extend(all.events(changed).await);
    let away: Vec<Value> = events.iter().filter(|e| pos(e) > last).cloned().collect();
    let want = expected(&db, &away, condition).await;
    assert!(want.len() >= 3 && want.len() < away.len(), "some missed events match, some do not: {want:?}");

    let since = format!("{epoch}:{last}");
    let mut resumed = open(&b.ws_url(), &[("since", since.as_str()), filter[0]]).await;
    let frames = resumed.frames_until("subscribed").await;
    let replayed: Vec<Value> = frames.iter().filter(|f| f["type"] == "event").cloned().collect();
    assert_eq!(replayed.len() + 1, frames.len(), "only events before subscribed: {frames:?}");
    assert_eq!(deliveries(&replayed), want, "exactly the matching events after {since}");
    assert_eq!(frames.last().unwrap()["position"]["pos"], json!(pos(events.last().unwrap())));
    for frame in &frames {
        fold.apply(frame);
    }

    // Then live ones, on replica B.
    changed = exec(
        &db,
        &format!(
            "{}; {}; UPDATE orders SET status = 'done' WHERE customer_name = 'c1'",
            insert("d1", "pending"),
            insert("d2", "void")
        ),
    )
    .await;
    events.extend(all.events(changed).await);
    // The barrier needs the events in B's hub: a client of B got them all.
    assert_eq!(all_on_b.events(events.len()).await, events, "replica B relays the same events");
    let live = until_pong(&mut resumed, "after").await;
    assert_eq!(deliveries(&live), expected(&db, &events[events.len() - changed..], condition).await);
    for frame in &live {
        fold.apply(frame);
    }
    check_fold(&db, &fold, &events, condition).await;
}

// ---------------------------------------------------------------------------------------------
// 7. Several subscriptions on one connection

/// `(subs, order)` of each event frame (`subs` sorted), sorted by `subs`; checks that each is
/// an event at `at`.
fn routed(frames: &[Value], at: u64) -> Vec<(Value, Value)> {
    let mut out: Vec<(Value, Value)> = frames
        .iter()
        .map(|f| {
            assert_eq!((f["type"].as_str(), f["pos"].as_u64()), (Some("event"), Some(at)), "{f}");
            let mut subs: Vec<&str> = f["subs"].as_array().expect("subs").iter().filter_map(Value::as_str).collect();
            subs.sort_unstable();
            (json!(subs), f["order"].clone())
        })
        .collect();
    out.sort_by_key(|(subs, _)| subs.to_string());
    out
}

#[tokio::test]
async fn several_subscriptions_on_one_connection_name_theirs_in_each_frame() {
    let system = System::start(1).await;
    let db = pool(&system).await;
    let ws = &system.ws[0];
    let (mut all, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    let mut multi = open(&ws.ws_url(), &[("subscribe", "false")]).await;
    let subscribe = [
        json!({"type": "subscribe", "id": "a", "filter": "status=eq.pending"}),
        json!({"type": "subscribe", "id": "b", "filter": ["amount=gte.100"], "select": "id,amount"}),
        // Matches what a does and renders the same: one frame names both.
        json!({"type": "subscribe", "id": "c", "filter": "status=in.(pending)"}),
    ];
    for frame in &subscribe {
        multi.send_json(frame).await;
        let answer = multi.next_json().await;
        assert_eq!((answer["type"].as_str(), &answer["id"]), (Some("subscribed"), &frame["id"]), "{answer}");
    }
    // A default subscription from the URL, and a named one beside it: `default` is named.
    let mut mixed = open(&ws.ws_url(), &[("filter", "status=eq.pending")]).await;
    mixed.send_json(&json!({"type": "subscribe", "id": "big", "filter": "amount=gte.100"})).await;
    assert_eq!(mixed.next_json().await["id"], "big");

    // One change at a time: the frames each connection got for it.
    let mut step = async |sql: &str, clients: &mut [&mut WsClient]| -> (Value, Vec<Vec<Value>>) {
        assert_eq!(exec(&db, sql).await, 1, "{sql}");
        let event = all.events(1).await.remove(0);
        let mut frames = Vec::new();
        for client in clients.iter_mut() {
            frames.push(until_pong(client, "step").await);
        }
        (event, frames)
    };
    let insert = |name: &str, status: &str, amount: u32| {
        format!(
            "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('{name}', 'p', '{status}', {amount})"
        )
    };
    let (e, f) = step(&insert("Ann", "pending", 150), &mut [&mut multi, &mut mixed]).await;
    let (at, row) = (pos(&e), e["order"].clone());
    let id = row["id"].clone();
    assert_eq!(
        routed(&f[0], at),
        [(json!(["a", "c"]), row.clone()), (json!(["b"]), json!({"id": id, "amount": 150.0}))]
    );
    assert_eq!(routed(&f[1], at), [(json!(["big", "default"]), row)], "one rendering, one frame");

    let (e, f) = step(&insert("Ben", "shipped", 200), &mut [&mut multi, &mut mixed]).await;
    assert_eq!(routed(&f[0], pos(&e)), [(json!(["b"]), json!({"id": e["order"]["id"], "amount": 200.0}))]);
    assert_eq!(routed(&f[1], pos(&e)), [(json!(["big"]), e["order"].clone())]);
    let (e, f) = step(&insert("Cy", "pending", 5), &mut [&mut multi, &mut mixed]).await;
    assert_eq!(routed(&f[0], pos(&e)), [(json!(["a", "c"]), e["order"].clone())]);
    assert_eq!(routed(&f[1], pos(&e)), [(json!(["default"]), e["order"].clone())]);
    let (_, f) = step(&insert("Di", "shipped", 5), &mut [&mut multi, &mut mixed]).await;
    assert_eq!(f, [Vec::<Value>::new(), Vec::new()], "no subscription matches");
    // Ann leaves a and c (and default), and stays in b (and big): two renderings each.
    let (e, f) =
        step("UPDATE orders SET status = 'shipped' WHERE customer_name = 'Ann'", &mut [&mut multi, &mut mixed]).await;
    let summary = |frames: &[Value]| -> BTreeSet<String> {
        frames.iter().map(|f| format!("{} {} {}", f["subs"], f["view"], f["old"])).collect()
    };
    let mut want = BTreeSet::from([
        format!("{} \"leave\" {}", json!(["a", "c"]), e["old"]),
        format!("{} null {}", json!(["b"]), json!({"id": id, "amount": 150.0})),
    ]);
    routed(&f[0], pos(&e));
    assert_eq!(summary(&f[0]), want);
    want = BTreeSet::from([
        format!("{} \"leave\" {}", json!(["default"]), e["old"]),
        format!("{} null {}", json!(["big"]), e["old"]),
    ]);
    routed(&f[1], pos(&e));
    assert_eq!(summary(&f[1]), want);

    multi.send_json(&json!({"type": "unsubscribe", "id": "a"})).await;
    assert_eq!(multi.next_json().await, json!({"type": "unsubscribed", "id": "a"}));
    let (e, f) = step(&insert("Eve", "pending", 300), &mut [&mut multi]).await;
    let subs: Vec<Value> = routed(&f[0], pos(&e)).into_iter().map(|(subs, _)| subs).collect();
    assert_eq!(subs, [json!(["b"]), json!(["c"])], "nothing more for a");

    // Refusals name the subscription; the others go on.
    for (frame, code, needle) in [
        (json!({"type": "subscribe", "id": "d", "filter": "amount=gt."}), "invalid_filter", "amount=gt."),
        (
            json!({"type": "subscribe", "id": "d", "filter": ["status=eq.x", "status=sorta.x"]}),
            "invalid_filter",
            "sorta",
        ),
        (json!({"type": "subscribe", "id": "d", "select": "id,,status"}), "invalid_filter", "id,,status"),
        (json!({"type": "unsubscribe", "id": "zzz"}), "unknown_subscription", "zzz"),
    ] {
        multi.send_json(&frame).await;
        let error = multi.next_json().await;
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some(code)), "{error}");
        assert_eq!(error["id"], frame["id"], "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message}");
        if code == "invalid_filter" {
            assert!(message.contains("e.g."), "an example: {message}");
        }
    }
    let (e, f) = step(&insert("Fay", "shipped", 120), &mut [&mut multi]).await;
    assert_eq!(routed(&f[0], pos(&e)), [(json!(["b"]), json!({"id": e["order"]["id"], "amount": 120.0}))]);

    for id in ["b", "c"] {
        multi.send_json(&json!({"type": "unsubscribe", "id": id})).await;
        assert_eq!(multi.next_json().await, json!({"type": "unsubscribed", "id": id}));
    }
    let (_, f) = step(&insert("Gus", "pending", 500), &mut [&mut multi]).await;
    assert_eq!(f[0], Vec::<Value>::new(), "no subscription left");
}

/// Applies a frame of a connection with named subscriptions to the fold of each subscription
/// it is for (`subs` of an event, `id` of a snapshot).
fn dispatch(folds: &mut BTreeMap<&str, Fold>, frame: &Value) {
    let names: Vec<&str> = match frame["type"].as_str() {
        Some("event") => frame["subs"]
            .as_array()
            .expect("events name their subscriptions")
            .iter()
            .filter_map(Value::as_str)
            .collect(),
        Some("snapshot") => vec![frame["id"].as_str().expect("a named snapshot")],
        _ => return,
    };
    for name in names {
        folds.get_mut(name).unwrap_or_else(|| panic!("a frame for {name}, which is not held: {frame}")).apply(frame);
    }
}

#[tokio::test]
async fn subscriptions_added_beside_others_during_writes_start_with_their_own_snapshot_or_replay() {
    let system = System::start(1).await;
    let db = pool(&system).await;
    nullable_columns(&db).await;
    let ws = &system.ws[0];
    let (mut all, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    let mut rng = Rng(0xbe5_1de);
    let (mut ids, mut next_id) = (Vec::new(), 1);
    let mut changes = async |n: usize, rng: &mut Rng, ids: &mut Vec<i64>, next_id: &mut i64| -> Vec<Value> {
        let mut changed = 0;
        for _ in 0..n {
            changed += exec(&db, &random_change(rng, ids, next_id)).await;
        }
        all.events(changed).await
    };
    let mut events = changes(20, &mut rng, &mut ids, &mut next_id).await;

    // a: the only subscription, from a snapshot (it moves the connection's place).
    let mut multi = open(&ws.ws_url(), &[("subscribe", "false")]).await;
    let conditions = BTreeMap::from([
        ("a", "status = 'pending'"),
        ("b", "amount >= 100"),
        // `not.` of a comparison: NULL amounts are in neither b nor c.
        ("c", "NOT (amount >= 100)"),
    ]);
    let mut folds = BTreeMap::from([("a", Fold::new("a")), ("b", Fold::new("b"))]);
    multi.send_json(&json!({"type": "subscribe", "id": "a", "filter": "status=eq.pending", "snapshot": true})).await;
    for frame in multi.frames_until("subscribed").await {
        dispatch(&mut folds, &frame);
    }
    events.extend(changes(30, &mut rng, &mut ids, &mut next_id).await);
    // Where c will resume from, and what it held then.
    let mark = events.last().unwrap().clone();
    let (epoch, at) = (mark["epoch"].as_str().unwrap(), pos(&mark));
    let held = sql_view(&db, conditions["c"]).await;
    folds.insert("c", Fold::resuming("c", held, epoch, at));
    events.extend(changes(30, &mut rng, &mut ids, &mut next_id).await);

    // b (a snapshot, other columns) and c (a replay from the mark) join while rows change.
    let (finish_tx, finish) = watch::channel(false);
    let (progress_tx, mut progress) = watch::channel(0);
    let watcher = follow(all, Fold::events_only("all"), finish.clone(), Some(progress_tx));
    let (stop_writes, writing) = watch::channel(false);
    let writer = tokio::spawn({
        let db = db.clone();
        async move {
            let mut changed = 0;
            let deadline = tokio::time::Instant::now() + WAIT;
            while !*writing.borrow() && tokio::time::Instant::now() < deadline {
                changed += exec(&db, &random_change(&mut rng, &mut ids, &mut next_id)).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            changed
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b =
        json!({"type": "subscribe", "id": "b", "filter": "amount=gte.100", "select": "id,amount", "snapshot": true});
    multi.send_json(&b).await;
    let frames = multi.frames_until("subscribed").await;
    assert_eq!(frames.last().unwrap()["id"], "b");
    let snapshot = frames.iter().find(|f| f["type"] == "snapshot").expect("b's snapshot");
    assert_eq!(snapshot["id"], "b");
    let b_at = snapshot["position"]["pos"].as_u64().unwrap();
    for frame in &frames {
        if frame["type"] == "event" {
            assert!(frame["subs"] != json!(["b"]) || pos(frame) > b_at, "nothing for b up to its snapshot: {frame}");
        }
        dispatch(&mut folds, frame);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    multi.send_json(&json!({"type": "subscribe", "id": "c", "filter": "amount=not.gte.100", "since": {"epoch": epoch, "pos": at}})).await;
    let frames = multi.frames_until("subscribed").await;
    assert_eq!(frames.last().unwrap()["id"], "c");
    for frame in &frames {
        dispatch(&mut folds, frame);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_writes.send_replace(true);
    let written = timeout(WAIT, writer).await.expect("the writer stops").expect("the writer did not panic");
    let before = events.len();
    timeout(WAIT, progress.wait_for(|n| *n >= written)).await.expect("every event reaches the watcher").unwrap();
    finish_tx.send_replace(true);
    events.extend(watcher.await.unwrap().events);
    assert_eq!(events.len(), before + written);
    for frame in until_pong(&mut multi, "done").await {
        dispatch(&mut folds, &frame);
    }
    let (a_fold, c_fold) = (&folds["a"], &folds["c"]);
    check_fold(&db, a_fold, &events, conditions["a"]).await;
    check_fold(&db, c_fold, &events, conditions["c"]).await;
    let b_fold = &folds["b"];
    assert!(b_fold.violations.is_empty(), "{:?}", b_fold.violations);
    let after: Vec<Value> = events.iter().filter(|e| pos(e) > b_at).cloned().collect();
    assert_eq!(deliveries(&b_fold.events), expected(&db, &after, conditions["b"]).await, "b's events");
    let want: BTreeMap<i64, Value> =
        sql_view(&db, conditions["b"]).await.into_iter().map(|(id, row)| (id, project(&row, &["amount"]))).collect();
    assert_eq!(b_fold.rows, want, "b holds its rows, with its columns");
    assert!(
        written >= 50 && b_at > pos(&mark),
        "b's snapshot and c's replay were taken while {written} changes were written"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Malformed filters on the URL

/// Texts an answer must contain.
type Needles<'a> = &'a [&'a str];

#[tokio::test]
async fn malformed_filters_are_refused_with_400_before_the_upgrade() {
    let system = System::start(1).await;
    let ws = &system.ws[0];
    let too_many: Vec<(&str, &str)> = (0..17).map(|_| ("filter", "status=eq.pending")).collect();
    // (URL parameters, what the answer must say)
    let cases: Vec<(Vec<(&str, &str)>, Needles<'_>)> = vec![
        (vec![("filter", "status=foo.bar")], &["unknown operator \"foo\"", "status=foo.bar"]),
        (vec![("filter", "status=pending")], &["no \"<operator>.\"", "status=pending"]),
        (vec![("filter", "amount=gt.")], &["bad value", "amount=gt.", "the value is empty"]),
        (vec![("filter", "status=in.(a,b")], &["no closing parenthesis", "status=in.(a,b"]),
        (vec![("filter", "status=in.(a,\"b)")], &["a quote is not closed"]),
        (vec![("filter", "status")], &["has no \"=\"", "\"status\""]),
        (vec![("filter", "1st=eq.x")], &["bad column name \"1st\""]),
        (vec![("filter", "status=eq.pending"), ("filter", "status=is.maybe")], &["status=is.maybe"]),
        (vec![("select", "id,,status")], &["bad select", "id,,status"]),
        (too_many, &["too many filters: 17"]),
    ];
    for (params, needles) in &cases {
        for base in [ws.ws_url(), format!("ws://{}/", ws.addr)] {
            let path = url(&base, params);
            let path = path.strip_prefix(&format!("ws://{}", ws.addr)).unwrap();
            let (status, body) = upgrade_refusal(ws.addr, path).await;
            assert_eq!(status, 400, "{path}: {body}");
            for needle in needles.iter() {
                assert!(body.contains(needle), "{path}: {body:?} names {needle:?}");
            }
            if !needles[0].starts_with("too many") {
                assert!(body.contains("e.g."), "{path}: {body:?} shows an example");
            }
        }
        // The same on SSE.
        let path = url("/events", params);
        let (status, body) = http_get(ws.addr, &path).await.expect("an answer");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(needles[0]), "{path}: {body}");
    }
    let (status, body) = upgrade_refusal(ws.addr, "/ws?table=no%20such").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"no such\"") && body.contains("orders"), "{body}");
    // And a correct one is accepted.
    let good = url("/ws", &[("filter", "status=in.(pending,\"on hold\")"), ("select", "id,status")]);
    assert_eq!(upgrade_refusal(ws.addr, &good).await.0, 101);
}

// ---------------------------------------------------------------------------------------------
// 9. Many subscriptions on one replica

const CONNECTIONS: usize = 500;
const SUBS_PER_CONNECTION: usize = 20;
const CUSTOMERS: u64 = 5000;

/// What subscription `j` (of all, numbered across connections) asks for.
#[derive(Debug, Clone)]
enum Want {
    Customer(String),
    Customers(String, String),
    NotCustomer(String),
    AmountOver(u64),
}

impl Want {
    fn of(j: usize) -> Want {
        let customer = |k: usize| format!("c{}", (k as u64 * 7919) % CUSTOMERS);
        match j {
            _ if j % 97 == 5 => Want::AmountOver((j as u64 * 31) % 1000),
            _ if j % 41 == 3 => Want::Customers(customer(j), customer(j + 1)),
            _ if j % 331 == 2 => Want::NotCustomer(customer(j)),
            _ => Want::Customer(customer(j)),
        }
    }

    fn filter(&self) -> String {
        match self {
            Want::Customer(c) => format!("customer_name=eq.{c}"),
            Want::Customers(a, b) => format!("customer_name=in.({a},{b})"),
            Want::NotCustomer(c) => format!("customer_name=not.eq.{c}"),
            Want::AmountOver(x) => format!("amount=gt.{x}"),
        }
    }

    fn matches(&self, row: &Value) -> bool {
        let name = row["customer_name"].as_str().unwrap();
        match self {
            Want::Customer(c) => name == c,
            Want::Customers(a, b) => name == a || name == b,
            Want::NotCustomer(c) => name != c,
            Want::AmountOver(x) => row["amount"].as_f64().unwrap() > *x as f64,
        }
    }
}

async fn subscribed_connection(ws: &Service, first: usize) -> WsClient {
    let mut client = open(&ws.ws_url(), &[("subscribe", "false")]).await;
    for j in first..first + SUBS_PER_CONNECTION {
        client.send_json(&json!({"type": "subscribe", "id": format!("s{j}"), "filter": Want::of(j).filter()})).await;
    }
    for j in first..first + SUBS_PER_CONNECTION {
        let answer = client.next_json().await;
        assert_eq!(
            (answer["type"].as_str(), answer["id"].as_str()),
            (Some("subscribed"), Some(format!("s{j}").as_str()))
        );
    }
    client
}

#[tokio::test]
async fn each_event_reaches_exactly_the_matching_ones_of_10_000_subscriptions() {
    let mut system = System::start(0).await;
    let mut config = ws_config(&system.redis.url());
    config.max_subscriptions = SUBS_PER_CONNECTION;
    system.ws.push(spawn_ws(config).await);
    system.wait_ready().await;
    let db = pool(&system).await;
    let ws = &system.ws[0];
    let (mut all, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    let mut clients: Vec<(usize, WsClient)> = stream::iter(0..CONNECTIONS)
        .map(|c| async move { (c, subscribed_connection(ws, c * SUBS_PER_CONNECTION).await) })
        .buffer_unordered(50)
        .collect()
        .await;
    clients.sort_by_key(|(c, _)| *c);
    // One more is over the limit: refused, the others stay.
    let over = &mut clients[0].1;
    over.send_json(&json!({"type": "subscribe", "id": "extra", "filter": "status=eq.pending"})).await;
    let refused = over.next_json().await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_str()),
        (Some("limit_exceeded"), Some("extra")),
        "{refused}"
    );

    let mut rng = Rng(0x1de_c0de);
    let rows: Vec<String> = (0..120)
        .map(|_| format!("('c{}', 'p', {}.{:02})", rng.below(CUSTOMERS + 200), rng.below(1000), rng.below(100)))
        .collect();
    let inserted =
        exec(&db, &format!("INSERT INTO orders (customer_name, product_name, amount) VALUES {}", rows.join(", ")))
            .await;
    let events = all.events(inserted).await;

    let received: Vec<(usize, Vec<Value>)> = stream::iter(clients)
        .map(|(c, mut client)| async move { (c, until_pong(&mut client, "done").await) })
        .buffer_unordered(100)
        .collect()
        .await;
    let (mut delivered, mut reached) = (0, 0);
    for (c, frames) in received {
        let first = c * SUBS_PER_CONNECTION;
        let mut want: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for event in &events {
            let subs: Vec<String> = (first..first + SUBS_PER_CONNECTION)
                .filter(|j| Want::of(*j).matches(&event["order"]))
                .map(|j| format!("s{j}"))
                .collect();
            if !subs.is_empty() {
                want.insert(pos(event), subs);
            }
        }
        let mut got: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for frame in &frames {
            assert_eq!(frame["type"], "event", "connection {c}: {frame}");
            let mut subs: Vec<String> =
                frame["subs"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
            subs.sort_by_key(|s| s[1..].parse::<usize>().unwrap());
            assert!(got.insert(pos(frame), subs).is_none(), "connection {c}: one frame per event: {frame}");
        }
        assert_eq!(got, want, "connection {c}: every event reaches exactly its matching subscriptions");
        delivered += want.values().map(Vec::len).sum::<usize>();
        reached += usize::from(!want.is_empty());
    }
    assert!(delivered >= 2 * events.len() && reached >= 100, "{delivered} deliveries to {reached} connections");
}
