//! The browser dashboard (ws-server/dashboard/), in a real headless Chromium over WebDriver
//! against the real pipeline: what a person sees after psql changes, filters, a replica
//! killed under the page, tokens, the page's own model tests, and screenshots. Plus its HTTP
//! surface (types, caching, CSP), which needs no browser.
//!
//! Without chromium and chromedriver the browser tests skip with a printed reason, except
//! under `CI=true`, where they fail (e2e::browser).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use e2e::{Browser, BrowserOptions, Service, System, WAIT, spawn_ws, ws_config};
use serde_json::{Value, json};
use testkit::RedisServer;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// What the issue promises for a change to reach the screen.
const SECOND: Duration = Duration::from_secs(1);

/// An HTTP response, headers lower-cased.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `headers`, HTTP/1.1, `Connection: close`.
pub(crate) async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        String::from_utf8_lossy(&raw).into_owned()
    };
    let text = timeout(WAIT, exchange).await.expect("an answer in time");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply { status, headers, body: body.to_owned() }
}

/// What a browser sends for a page.
pub(crate) const BROWSER_ACCEPT: (&str, &str) =
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8");

/// The page's asset URLs (`dashboard/<version>/<file>`), from its HTML.
pub(crate) fn asset_paths(page: &str) -> Vec<String> {
    page.split("\"dashboard/")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|p| format!("/dashboard/{p}"))
        .collect()
}

/// Checks the page and its assets at `addr` (a replica, or nginx in front of replicas).
pub(crate) async fn check_http_surface(addr: SocketAddr) {
    let page = get(addr, "/", &[BROWSER_ACCEPT]).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(page.header("vary").is_some_and(|v| v.to_ascii_lowercase().contains("accept")), "{page:?}");
    assert!(page.body.contains("<table id=\"orders\""), "the dashboard: {}", page.body);

    // The same path for tools and WebSocket clients is what it was.
    let tool = get(addr, "/", &[("Accept", "*/*")]).await;
    assert_eq!(tool.status, 200);
    assert!(tool.body.starts_with("orders realtime ws-server: connect a WebSocket"), "{}", tool.body);

    let assets = asset_paths(&page.body);
    assert!(
        assets.iter().any(|p| p.ends_with("/app.js")) && assets.iter().any(|p| p.ends_with("/app.css")),
        "{assets:?}"
    );
    for path in &assets {
        let asset = get(addr, path, &[]).await;
        assert_eq!(asset.status, 200, "{path}");
        let expected = match path.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            other => panic!("unexpected asset {other:?}"),
        };
        assert_eq!(asset.header("content-type"), Some(expected), "{path}");
        assert_eq!(asset.header("cache-control"), Some("public, max-age=31536000, immutable"), "{path}");
        assert_eq!(asset.header("x-content-type-options"), Some("nosniff"));
        let etag = asset.header("etag").expect("an ETag").to_owned();
        let again = get(addr, path, &[("If-None-Match", &etag)]).await;
        assert_eq!((again.status, again.body.as_str()), (304, ""), "{path} revalidates");
    }
    // A page of an older release asks for its version: today's file, but not cached as it.
    let app = assets.iter().find(|p| p.ends_with("/app.js")).unwrap();
    let old = get(addr, "/dashboard/0123456789ab/app.js", &[]).await;
    assert_eq!((old.status, old.header("cache-control")), (200, Some("no-cache")));
    assert_eq!(old.body, get(addr, app, &[]).await.body);
    assert_eq!(get(addr, "/dashboard/0123456789ab/nope.js", &[]).await.status, 404);
    assert_eq!(get(addr, "/dashboard", &[]).await.status, 200, "/dashboard is the page whatever the Accept");
}

#[tokio::test]
async fn the_page_and_its_assets_are_served_with_their_types_caching_and_a_strict_csp() {
    let redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    check_http_surface(ws.addr).await;
    // `/ws` answers a plain GET as before, browser or not.
    let plain = get(ws.addr, "/ws", &[BROWSER_ACCEPT]).await;
    assert!(plain.body.starts_with("orders realtime ws-server"), "{plain:?}");
}

// ---- in the browser ------------------------------------------------------------------

/// The page of replica `ws`.
fn page(ws: &Service) -> String {
    format!("http://{}/", ws.addr)
}

/// Where screenshots go (`target/tmp/dashboard/`).
fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard").join(name)
}

const STATE: &str = "document.getElementById('status').dataset.state";

/// The table as shown: one object per row, cell text by column.
const ROWS: &str = "[...document.querySelectorAll('#orders tbody tr')].map(tr => \
     Object.fromEntries([...tr.children].map(td => [td.dataset.col, td.textContent])))";

/// The log's change entries as shown, oldest first.
const LOG: &str = "[...document.querySelectorAll('#log li[data-op]')].reverse().map(li => \
     ({op: li.dataset.op, id: Number(li.dataset.id), pos: Number(li.dataset.pos), view: li.dataset.view || null, \
       text: li.textContent}))";

async fn wait_live(browser: &Browser) {
    browser.wait_for("the page is live", &format!("{STATE} === 'live'"), WAIT).await;
}

async fn shown_ids(browser: &Browser) -> Vec<i64> {
    let rows = browser.js(&format!("return {ROWS};")).await;
    let mut ids: Vec<i64> =
        rows.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().parse().unwrap()).collect();
    ids.sort_unstable();
    ids
}

async fn log(browser: &Browser) -> Vec<Value> {
    browser.js(&format!("return {LOG};")).await.as_array().unwrap().clone()
}

#[tokio::test]
async fn the_dashboards_model_passes_its_own_tests_in_chromium() {
    let Some(browser) = Browser::start().await else { return };
    let redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    browser.goto(&page(&ws)).await;
    // The test module is served beside model.js, under the same version.
    let result = browser
        .js_async(
            "const done = arguments[arguments.length - 1];
             const src = document.querySelector('script[type=module]').src.replace(/app\\.js$/, 'model.test.js');
             import(src).then(m => m.run()).then(done, e => done({passed: 0, total: 0, failed: [{name: 'import', message: String(e)}]}));",
        )
        .await;
    let failed = result["failed"].as_array().expect("a result");
    assert!(failed.is_empty(), "model tests failed:\n{}", serde_json::to_string_pretty(failed).unwrap());
    assert!(result["passed"].as_u64() >= Some(15), "{result}");
    browser.close().await;
}

#[tokio::test]
async fn psql_inserts_updates_and_deletes_reach_the_table_and_the_log_within_a_second() {
    let Some(browser) = Browser::start().await else { return };
    let system = System::start(1).await;
    system.sql("INSERT INTO orders (customer_name, product_name, amount) VALUES ('Ada', 'Gizmo', 10)").await;
    browser.goto(&page(&system.ws[0])).await;
    wait_live(&browser).await;
    assert_eq!(shown_ids(&browser).await, [1], "the snapshot's row");
    let server = browser.js("return document.getElementById('server').textContent").await;
    assert_eq!(server, json!(format!("ws-{}", system.ws[0].addr.port())), "the replica, from its hello");

    system
        .sql(
            "INSERT INTO orders (customer_name, product_name, status) VALUES ('John Doe', 'Premium Widget', 'pending')",
        )
        .await;
    let (_, took) = browser
        .wait_for(
            "the INSERT in the table and the log",
            r#"document.querySelector('#orders tr[data-id="2"]') && document.querySelector('#log li[data-op=INSERT][data-id="2"]')"#,
            SECOND,
        )
        .await;
    eprintln!("INSERT on screen {took:?} after psql returned");
    let rows = browser.js(&format!("return {ROWS};")).await;
    assert_eq!(rows[0]["customer_name"], "John Doe", "newest first: {rows}");
    assert_eq!(rows[0]["status"], "pending");

    system.sql("UPDATE orders SET status = 'completed' WHERE id = 2").await;
    let (_, took) = browser
        .wait_for(
            "the UPDATE in place, the changed cell highlighted, and in the log",
            r#"(() => { const td = document.querySelector('#orders tr[data-id="2"] td[data-col=status]');
                const li = document.querySelector('#log li[data-op=UPDATE][data-id="2"]');
                return td && td.textContent === 'completed' && /flash-[ab]/.test(td.className)
                    && !/flash/.test(document.querySelector('#orders tr[data-id="2"] td[data-col=customer_name]').className)
                    && li && li.textContent.includes('status pending → completed'); })()"#,
            SECOND,
        )
        .await;
    eprintln!("UPDATE on screen {took:?} after psql returned");

    system.sql("DELETE FROM orders WHERE id = 2").await;
    let (_, took) = browser
        .wait_for(
            "the DELETE gone from the table and in the log",
            r#"!document.querySelector('#orders tr[data-id="2"]') && document.querySelector('#log li[data-op=DELETE][data-id="2"]')"#,
            SECOND,
        )
        .await;
    eprintln!("DELETE on screen {took:?} after psql returned");
    assert_eq!(shown_ids(&browser).await, [1]);

    // The log: one entry per change, in order, consecutive positions, colour-coded.
    let entries = log(&browser).await;
    let ops: Vec<&str> = entries.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["INSERT", "UPDATE", "DELETE"], "{entries:?}");
    let first = entries[0]["pos"].as_u64().unwrap();
    let positions: Vec<u64> = entries.iter().map(|e| e["pos"].as_u64().unwrap()).collect();
    assert_eq!(positions, [first, first + 1, first + 2]);
    let colours = browser
        .js("return ['INSERT','UPDATE','DELETE'].map(op => getComputedStyle(document.querySelector(`#log li[data-op=${op}] .op`)).color)")
        .await;
    let rgb = |v: &Value| -> Vec<u32> {
        v.as_str()
            .unwrap()
            .trim_start_matches("rgb(")
            .trim_end_matches(')')
            .split(',')
            .map(|c| c.trim().parse().unwrap())
            .collect()
    };
    let (insert, update, delete) = (rgb(&colours[0]), rgb(&colours[1]), rgb(&colours[2]));
    assert!(insert[1] > insert[0] && insert[1] > insert[2], "INSERT is green: {colours}");
    assert!(update[0] > update[2] && update[1] > update[2], "UPDATE is amber: {colours}");
    assert!(delete[0] > delete[1] && delete[0] > delete[2], "DELETE is red: {colours}");

    // Counters.
    let counters =
        browser.js("return ['rows','lag','rate','position'].map(id => document.getElementById(id).textContent)").await;
    assert_eq!(counters[0], "1", "{counters}");
    assert!(counters[1].as_str().unwrap().ends_with(" ms"), "commit → screen lag: {counters}");
    assert!(counters[3].as_str().unwrap().ends_with(&format!(":{}", first + 2)), "the position: {counters}");

    // Ctrl+L clears the log; Ctrl+R reconnects and resumes after the last position.
    browser.ctrl('l').await;
    browser.wait_for("the log cleared", "document.querySelectorAll('#log li').length === 0", SECOND).await;
    browser.ctrl('r').await;
    browser.wait_for("a reconnect noted", "document.querySelector('#log li.notice')", SECOND).await;
    wait_live(&browser).await;
    system.sql("UPDATE orders SET amount = 11 WHERE id = 1").await;
    let (entry, _) = browser
        .wait_for(
            "the next change after the reconnect",
            "document.querySelector('#log li[data-op=UPDATE]')?.dataset.pos",
            SECOND,
        )
        .await;
    assert_eq!(entry, json!((first + 3).to_string()), "resumed after the last position, nothing replayed twice");
    assert_eq!(log(&browser).await.len(), 1, "only the new change");
    browser.close().await;
}

#[tokio::test]
async fn a_filter_hides_rows_outside_it_and_shows_a_row_that_moves_into_it() {
    let Some(browser) = Browser::start().await else { return };
    let system = System::start(1).await;
    system
        .sql(
            "INSERT INTO orders (customer_name, product_name, status, amount) VALUES
             ('Ada', 'Gizmo', 'pending', 10), ('Bob', 'Widget', 'shipped', 200), ('Cy', 'Widget', 'pending', 300)",
        )
        .await;
    browser.goto(&page(&system.ws[0])).await;
    wait_live(&browser).await;
    assert_eq!(shown_ids(&browser).await, [1, 2, 3]);

    browser.fill("#f-status", "shipped").await;
    browser.click("#apply").await;
    browser.wait_for("only shipped orders", &format!("{ROWS}.map(r => r.id).join() === '2'"), SECOND).await;
    let url = browser.js("return location.search").await;
    assert_eq!(url, "?status=shipped", "the view is in the address");
    let note = browser.js("return document.getElementById('filter-note').textContent").await;
    assert!(note.as_str().unwrap().contains("status=eq.shipped"), "{note}");

    // A row that moves into the view appears; one that moves out disappears; others stay out.
    system.sql("UPDATE orders SET status = 'shipped' WHERE id = 1").await;
    browser
        .wait_for("a row entering the view", &format!("{ROWS}.map(r => r.id).sort().join() === '1,2'"), SECOND)
        .await;
    system.sql("UPDATE orders SET status = 'delivered' WHERE id = 2").await;
    browser.wait_for("a row leaving the view", &format!("{ROWS}.map(r => r.id).join() === '1'"), SECOND).await;
    system.sql("INSERT INTO orders (customer_name, product_name, status) VALUES ('Dee', 'Gizmo', 'pending')").await;
    system.sql("UPDATE orders SET amount = 301 WHERE id = 3").await;
    system.sql("UPDATE orders SET amount = 11 WHERE id = 1").await; // a marker: it comes last
    browser
        .wait_for(
            "the marker",
            r#"document.querySelector('#orders tr[data-id="1"] td[data-col=amount]')?.textContent === '11.00'"#,
            SECOND,
        )
        .await;
    assert_eq!(shown_ids(&browser).await, [1], "changes outside the view never show");
    let views: Vec<Value> = log(&browser).await.iter().map(|e| json!([e["id"], e["view"]])).collect();
    assert_eq!(
        views,
        [json!([1, "enter"]), json!([2, "leave"]), json!([1, null])],
        "only the view's changes are logged"
    );

    // Any column with the PostgREST syntax (a category view), and the customer field.
    browser.fill("#f-status", "").await;
    browser.fill("#f-advanced", "product_name=eq.Widget & amount=gte.100").await;
    browser.click("#apply").await;
    browser
        .wait_for("the Widget orders of 100 or more", &format!("{ROWS}.map(r => r.id).sort().join() === '2,3'"), SECOND)
        .await;
    browser.fill("#f-advanced", "").await;
    browser.fill("#f-customer", "bo").await;
    browser.click("#apply").await;
    browser.wait_for("Bob's orders", &format!("{ROWS}.map(r => r.id).join() === '2'"), SECOND).await;

    // A filter the server refuses is shown, and the view stays as it was.
    browser.fill("#f-advanced", "status=in.(a").await;
    browser.click("#apply").await;
    browser
        .wait_for("the server's refusal", "document.getElementById('filter-note').classList.contains('error')", SECOND)
        .await;
    system.sql("UPDATE orders SET amount = 201 WHERE id = 2").await;
    browser
        .wait_for(
            "the old view goes on",
            r#"document.querySelector('#orders tr[data-id="2"] td[data-col=amount]')?.textContent === '201.00'"#,
            SECOND,
        )
        .await;
    assert_eq!(shown_ids(&browser).await, [2]);
    browser.close().await;
}

#[tokio::test]
async fn killing_the_replica_the_page_is_on_moves_it_to_another_that_resumes_with_no_gap() {
    let Some(browser) = Browser::start().await else { return };
    let system = System::start(0).await;
    let dir = tempfile::tempdir().expect("log dir");
    let mut replicas = [
        crate::nginx::replica("ws-a", &system, dir.path()).await,
        crate::nginx::replica("ws-b", &system, dir.path()).await,
    ];
    let servers: Vec<String> = replicas.iter().map(|r| format!("ws://{}/ws", r.addr())).collect();
    browser.goto(&format!("http://{}/?servers={}", replicas[0].addr(), servers.join(","))).await;
    wait_live(&browser).await;
    let insert = |n: usize| format!("INSERT INTO orders (customer_name, product_name) VALUES ('c{n}', 'p')");
    for n in 0..3 {
        system.sql(&insert(n)).await;
    }
    browser.wait_for("three inserts", &format!("{LOG}.length === 3"), WAIT).await;

    let on = browser.js("return document.getElementById('server').textContent").await;
    let killed = replicas.iter().position(|r| on == r.name.as_str()).unwrap_or_else(|| panic!("the page is on {on}"));
    replicas[killed].kill().await;
    for n in 3..6 {
        system.sql(&insert(n)).await; // while the page is away
    }
    let other = replicas[1 - killed].name.clone();
    browser
        .wait_for(
            "live on the other replica",
            &format!("{STATE} === 'live' && document.getElementById('server').textContent === '{other}'"),
            WAIT,
        )
        .await;
    for n in 6..8 {
        system.sql(&insert(n)).await;
    }
    browser.wait_for("every insert in the log", &format!("{LOG}.length >= 8"), WAIT).await;

    let entries = log(&browser).await;
    let positions: Vec<u64> = entries.iter().map(|e| e["pos"].as_u64().unwrap()).collect();
    let first = positions[0];
    assert_eq!(positions, (first..first + 8).collect::<Vec<_>>(), "consecutive: no gap, nothing twice: {entries:?}");
    assert_eq!(shown_ids(&browser).await, (1..=8).collect::<Vec<i64>>());
    let notices = browser.js("return [...document.querySelectorAll('#log li.notice')].map(li => li.textContent)").await;
    assert!(notices.to_string().contains("closed"), "the drop is in the log: {notices}");
    browser.close().await;
}

#[tokio::test]
async fn with_auth_on_the_page_asks_for_a_token_and_connects_with_it() {
    let Some(browser) = Browser::start().await else { return };
    let redis = RedisServer::start().await;
    let ws = spawn_ws(crate::support::hs_config(&redis.url(), &[])).await;
    ws.wait_ready().await;
    browser.goto(&page(&ws)).await;
    browser.wait_for("the token field", "!document.getElementById('token-field').hidden", SECOND).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(browser.js(&format!("return {STATE}")).await, "live", "no token, no stream");

    // "Test connection" says why.
    browser.click("#test").await;
    let (probe, _) =
        browser.wait_for("the probe's answer", "document.querySelector('#probe li.bad')?.textContent", WAIT).await;
    assert!(probe.as_str().unwrap().contains("HTTP 401"), "{probe}");

    let token = crate::support::hs256(&json!({"sub": "bob", "exp": crate::support::in_secs(600)}));
    browser.fill("#token", &token).await;
    browser.click("#apply-connection").await;
    wait_live(&browser).await;
    browser.click("#test").await;
    let (probe, _) =
        browser.wait_for("the probe's answer", "document.querySelector('#probe li.ok')?.textContent", WAIT).await;
    assert!(probe.as_str().unwrap().contains(&format!("ws-{}", ws.addr.port())), "{probe}");
    browser.close().await;
}

#[tokio::test]
async fn a_position_the_server_cannot_continue_from_is_a_visible_reset_and_a_fresh_snapshot() {
    let Some(browser) = Browser::start().await else { return };
    let system = System::start(1).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Ada', 'a'), ('Bob', 'b')").await;
    // A bookmark from a history Redis no longer holds.
    browser.goto(&format!("{}?since=gone0epoch:5", page(&system.ws[0]))).await;
    wait_live(&browser).await;
    let (banner, _) = browser
        .wait_for(
            "the reset said",
            "!document.getElementById('banner').hidden && document.getElementById('banner').textContent",
            SECOND,
        )
        .await;
    assert!(banner.as_str().unwrap().contains("History reset"), "{banner}");
    let notices =
        browser.js("return [...document.querySelectorAll('#log li.notice')].map(li => li.textContent).reverse()").await;
    let notices = notices.to_string();
    assert!(notices.contains("history reset (history_lost)") && notices.contains("snapshot: 2 rows"), "{notices}");
    assert_eq!(shown_ids(&browser).await, [1, 2], "the fresh snapshot");
    system.sql("DELETE FROM orders WHERE id = 1").await;
    browser.wait_for("live after the reset", "!document.querySelector('#orders tr[data-id=\"1\"]')", SECOND).await;
    browser.close().await;
}

#[tokio::test]
async fn a_flood_of_changes_keeps_the_page_responsive_with_the_log_and_the_table_capped() {
    let Some(browser) = Browser::start().await else { return };
    let system = System::start(1).await;
    browser.goto(&page(&system.ws[0])).await;
    wait_live(&browser).await;
    // Every main-thread task over 50 ms from here on, and the longest draw (for the message).
    browser
        .js("window.longest = 0; new PerformanceObserver(l => { for (const e of l.getEntries()) \
             window.longest = Math.max(window.longest, e.duration); }).observe({type: 'longtask'}); \
             window.drawMax = 0; const raf = window.requestAnimationFrame.bind(window); \
             window.requestAnimationFrame = cb => raf(t => { const s = performance.now(); cb(t); window.drawMax = Math.max(window.drawMax, performance.now() - s); }); \
             return true;")
        .await;
    system
        .sql("INSERT INTO orders (customer_name, product_name, amount) SELECT 'c' || n, 'p', n FROM generate_series(1, 3000) n")
        .await;
    system.sql("UPDATE orders SET status = 'shipped' WHERE id % 2 = 0").await;
    let (_, took) = browser
        .wait_for("every change folded", "document.getElementById('rows').textContent === '3,000' && document.querySelector('#orders tr[data-id=\"3000\"] .status')?.textContent === 'shipped'", WAIT)
        .await;
    eprintln!("4500 changes on screen {took:?} after psql returned");
    let shown = browser
        .js("return [document.querySelectorAll('#log li').length, document.querySelectorAll('#orders tbody tr').length, \
                     document.getElementById('rows-note').textContent, window.longest, window.drawMax]")
        .await;
    eprintln!("longest main-thread task during the flood: {} ms, longest draw {} ms", shown[3], shown[4]);
    assert_eq!(shown[0], 500, "the log keeps the newest 500: {shown}");
    assert_eq!(shown[1], 500, "the table draws the newest 500 rows: {shown}");
    assert_eq!(shown[2], "newest 500 of 3,000", "{shown}");
    assert!(shown[3].as_f64() < Some(1000.0), "no task froze the page for a second: {shown}");
    browser.close().await;
}

/// Changes that make a readable picture: a few orders, each kind of change in the log.
async fn seed_for_screenshot(system: &System) {
    system
        .sql(
            "INSERT INTO orders (customer_name, product_name, status, amount) VALUES
             ('John Doe', 'Premium Widget', 'pending', 129.00),
             ('Ada Lovelace', 'Analytical Engine', 'processing', 4200.00),
             ('Grace Hopper', 'Compiler Kit', 'shipped', 349.50),
             ('Alan Turing', 'Enigma Rotor', 'pending', 89.99),
             ('Edsger Dijkstra', 'Semaphore Pack', 'completed', 15.00),
             ('Barbara Liskov', 'Substitution Set', 'pending', 64.00)",
        )
        .await;
}

async fn screenshot_changes(system: &System) {
    for sql in [
        "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('Margaret Hamilton', 'Apollo Guidance', 'pending', 990.00)",
        "UPDATE orders SET status = 'shipped' WHERE id = 1",
        "DELETE FROM orders WHERE id = 5",
        "UPDATE orders SET status = 'completed', amount = 4350.00 WHERE id = 2",
        "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('Ken Thompson', 'Unix Tape', 'processing', 42.00)",
        "UPDATE orders SET status = 'cancelled' WHERE id = 4",
    ] {
        system.sql(sql).await;
    }
}

/// The lowest WCAG contrast ratio between the text of `selectors` and what is behind it.
const CONTRAST: &str = r#"
    const parse = c => { const m = c.match(/[\d.]+/g).map(Number); return m.length > 3 && m[3] === 0 ? null : m.slice(0, 3); };
    const lum = rgb => { const [r, g, b] = rgb.map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
    const behind = el => { for (let e = el; e; e = e.parentElement) { const c = parse(getComputedStyle(e).backgroundColor); if (c) return c; } return [255, 255, 255]; };
    const out = [];
    for (const sel of arguments[0]) for (const el of document.querySelectorAll(sel)) {
      const a = lum(parse(getComputedStyle(el).color)), b = lum(behind(el));
      out.push([sel, (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)]);
    }
    return out;"#;

async fn lowest_contrast(browser: &Browser) -> (String, f64) {
    let selectors = json!([
        "body",
        ".stat .label",
        ".stat .value",
        "th",
        "td",
        ".status",
        ".log .op",
        ".log time",
        ".log .what",
        "#status",
        ".conn",
        "button",
        ".foot"
    ]);
    let pairs = browser.client().execute(CONTRAST, vec![selectors]).await.expect("contrast script");
    pairs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_owned(), p[1].as_f64().unwrap()))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("elements to measure")
}

#[tokio::test]
async fn the_dashboard_is_readable_on_desktop_and_phone_in_light_and_dark_and_screenshots_it() {
    let Some(desktop) = Browser::start_with(BrowserOptions { size: (1280, 1000), ..BrowserOptions::default() }).await
    else {
        return;
    };
    let system = System::start(1).await;
    seed_for_screenshot(&system).await;
    let url = page(&system.ws[0]);
    desktop.goto(&url).await;
    wait_live(&desktop).await;
    screenshot_changes(&system).await;
    desktop.wait_for("every change shown", &format!("{LOG}.length === 6"), WAIT).await;
    // Let the highlights fade but one, as a person would see it a moment after a change.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    system.sql("UPDATE orders SET amount = 359.50 WHERE id = 3").await;
    desktop.wait_for("the last change", &format!("{LOG}.length === 7"), WAIT).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let overflow = desktop
        .js("return [document.documentElement.scrollWidth - window.innerWidth, \
                     document.querySelector('#orders').scrollWidth - document.querySelector('.scroll').clientWidth]")
        .await;
    assert!(
        overflow[0].as_i64() <= Some(0) && overflow[1].as_i64() <= Some(0),
        "no sideways scrolling: {overflow} (page, table)"
    );
    let (worst, ratio) = lowest_contrast(&desktop).await;
    assert!(ratio >= 4.5, "light mode: {worst} has contrast {ratio:.2} (WCAG AA needs 4.5)");
    desktop.screenshot(&artifact("dashboard.png")).await;
    if std::env::var("UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        desktop.screenshot(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png")).await;
    }
    desktop.close().await;

    let phone = Browser::start_with(BrowserOptions { size: (390, 844), phone: true, ..BrowserOptions::default() })
        .await
        .expect("a browser");
    phone.goto(&url).await;
    wait_live(&phone).await;
    let overflow = phone
        .js("return [document.documentElement.scrollWidth - window.innerWidth, \
                     document.querySelector('#orders').scrollWidth - document.querySelector('.scroll').clientWidth]")
        .await;
    assert!(overflow[0].as_i64() <= Some(0), "a phone never scrolls sideways: {overflow} px too wide (page, table)");
    assert!(overflow[1].as_i64() <= Some(0), "the table fits a phone too: {overflow} px too wide (page, table)");
    let hidden = phone.js("return getComputedStyle(document.querySelector('th[data-col=created_at]')).display").await;
    assert_eq!(hidden, "none", "the least needed columns give way");
    assert_eq!(phone.js("return window.innerWidth").await, 390, "a phone's width");
    phone.screenshot(&artifact("dashboard-phone.png")).await;
    phone.close().await;

    let dark =
        Browser::start_with(BrowserOptions { dark: true, ..BrowserOptions::default() }).await.expect("a browser");
    dark.goto(&url).await;
    wait_live(&dark).await;
    let background = dark.js("return getComputedStyle(document.body).backgroundColor").await;
    assert_eq!(background, "rgb(14, 19, 27)", "dark mode follows prefers-color-scheme");
    let (worst, ratio) = lowest_contrast(&dark).await;
    assert!(ratio >= 4.5, "dark mode: {worst} has contrast {ratio:.2} (WCAG AA needs 4.5)");
    dark.screenshot(&artifact("dashboard-dark.png")).await;
    dark.close().await;
}

#[tokio::test]
async fn the_dashboard_works_through_the_shipped_nginx_config() {
    let Some(browser) = Browser::start().await else { return };
    let system = System::start(2).await;
    let nginx = crate::nginx::nginx_in_front_of(&system).await;
    // The page's default server is its own origin's /ws: through nginx, to either replica.
    browser.goto(&format!("http://{}/", nginx.addr())).await;
    wait_live(&browser).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Via', 'nginx')").await;
    browser.wait_for("the insert through nginx", r#"document.querySelector('#orders tr[data-id="1"]')"#, SECOND).await;
    let server = browser.js("return document.getElementById('server').textContent").await;
    let ids: Vec<String> = system.ws.iter().map(|ws| format!("ws-{}", ws.addr.port())).collect();
    assert!(ids.iter().any(|id| server == id.as_str()), "{server} is one of {ids:?}");
    browser.close().await;
    drop(nginx);
}

#[tokio::test]
async fn the_browser_and_its_driver_are_gone_after_a_test() {
    let Some(browser) = Browser::start().await else { return };
    browser.goto("about:blank").await;
    let group = browser.process_group().expect("a process group");
    drop(browser); // as a panicking test would
    // Every process of the group (chromedriver, chromium and its helpers) is killed.
    testkit::wait_until(WAIT, "the browser's processes gone", || async { !e2e::browser::group_alive(group) }).await;
}
