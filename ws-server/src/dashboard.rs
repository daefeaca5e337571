//! The browser dashboard: a static page and its ES modules, embedded in the binary
//! (`ws-server/dashboard/`), so every replica serves it with no files beside it, no CDN and no
//! build step.
//!
//! - `GET /` with `Accept: text/html` and no upgrade (`http`), and `GET /dashboard`: the page.
//!   Never cached without revalidation (`no-cache` + ETag), so a new release shows at once.
//! - `GET /dashboard/{version}/{file}`: the assets. The page names them under the build's
//!   content version, so they are cached for a year (`immutable`); an old page asking for
//!   another version gets today's file, revalidated instead of cached.
//!
//! Every response carries a strict Content-Security-Policy: scripts and styles only from this
//! origin as files (no inline script, no `eval`), WebSocket connections to any host (the page
//! may be given several replicas), nothing framed.

use std::sync::{Arc, OnceLock};

use axum::{
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::AppState;

/// `connect-src`: the page's own origin (`/events`, `/readyz` for "test connection") and
/// WebSocket or HTTP(S) replicas anywhere, since `?servers=` may list other hosts.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self' ws: wss: http: https:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug)]
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The page's files. `model.test.js` ships too: the model's tests, which the e2e suite runs in
/// a real browser against the very bytes a replica serves.
const ASSETS: &[Asset] = &[
    Asset { name: "app.css", content_type: "text/css; charset=utf-8", body: include_str!("../dashboard/app.css") },
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../dashboard/app.js") },
    Asset {
        name: "model.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/model.js"),
    },
    Asset {
        name: "model.test.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../dashboard/model.test.js"),
    },
    Asset { name: "icon.svg", content_type: "image/svg+xml", body: include_str!("../dashboard/icon.svg") },
];

const INDEX: &str = include_str!("../dashboard/index.html");

/// FNV-1a: a stable content hash with no dependency; collisions only cost a stale cache entry.
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain([0xff]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// The content version of all assets together: it names their URLs.
fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut parts: Vec<&str> = ASSETS.iter().map(|a| a.body).collect();
        parts.push(INDEX);
        format!("{:012x}", fnv1a(&parts) & 0xffff_ffff_ffff)
    })
}

/// Whether a request without an upgrade is a browser asking for a page: its `Accept` names
/// `text/html` (or XHTML) with a non-zero quality. `*/*` alone (curl, probes) is not.
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|range| {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let html = media.eq_ignore_ascii_case("text/html") || media.eq_ignore_ascii_case("application/xhtml+xml");
        let refused = parts.any(|p| matches!(p.split_once('='), Some((k, q)) if k.trim().eq_ignore_ascii_case("q") && q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)));
        html && !refused
    })
}

/// The page with its placeholders filled: the asset version, and whether a token is needed.
fn page(auth_required: bool) -> &'static str {
    static PAGES: OnceLock<[String; 2]> = OnceLock::new();
    let pages = PAGES.get_or_init(|| {
        let fill = |auth: &str| INDEX.replace("{{version}}", version()).replace("{{auth}}", auth);
        [fill("off"), fill("required")]
    });
    &pages[usize::from(auth_required)]
}

/// A response with the security headers every dashboard response carries; 304 when the
/// client's `If-None-Match` names `etag`.
fn respond(
    request: &HeaderMap,
    etag: String,
    content_type: &'static str,
    cache: &'static str,
    body: &'static str,
) -> Response {
    let etag = HeaderValue::from_str(&etag).expect("a hex ETag is a valid header value");
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || tag.trim().trim_start_matches("W/") == etag);
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::ETAG, etag);
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // `/` answers by `Accept` (page or text): caches must keep the two apart.
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// The page (`GET /` for browsers, `GET /dashboard`).
pub(crate) fn index(state: &AppState, request: &HeaderMap) -> Response {
    let auth = state.auth.is_enabled();
    let body = page(auth);
    let etag = format!("\"{}-{}\"", version(), if auth { "a" } else { "o" });
    respond(request, etag, "text/html; charset=utf-8", "no-cache", body)
}

/// `GET /dashboard`: the page whatever the `Accept` header says (a link that always works).
pub(crate) async fn dashboard(State(state): State<Arc<AppState>>, request: HeaderMap) -> Response {
    index(&state, &request)
}

/// `GET /dashboard/{version}/{file}`.
pub(crate) async fn asset(Path((wanted, name)): Path<(String, String)>, request: HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return (StatusCode::NOT_FOUND, "no such dashboard file\n").into_response();
    };
    let cache = if wanted == version() { "public, max-age=31536000, immutable" } else { "no-cache" };
    let etag = format!("\"{:016x}\"", fnv1a(&[asset.body]));
    respond(&request, etag, asset.content_type, cache, asset.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn browsers_want_html_and_tools_do_not() {
        let chrome = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8";
        assert!(wants_html(&accept(chrome)));
        assert!(wants_html(&accept("TEXT/HTML")));
        assert!(!wants_html(&accept("*/*")), "curl's default");
        assert!(!wants_html(&accept("text/html;q=0, */*")));
        assert!(!wants_html(&accept("application/json")));
        assert!(!wants_html(&HeaderMap::new()));
    }

    #[test]
    fn the_page_names_its_assets_under_the_version_and_has_no_inline_script() {
        for auth in [false, true] {
            let page = page(auth);
            assert!(!page.contains("{{"), "every placeholder filled");
            assert!(page.contains(&format!("dashboard/{}/app.js", version())));
            assert!(page.contains(&format!("dashboard/{}/app.css", version())));
            // The CSP allows no inline script: every <script> has a src.
            for tag in page.split("<script").skip(1) {
                let head = tag.split('>').next().unwrap();
                assert!(head.contains("src="), "inline script: <script{head}>");
            }
            assert!(!page.contains(" style="), "no inline styles");
            let handler = page.match_indices(" on").any(|(at, _)| {
                let rest = &page[at + 3..];
                let name = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_lowercase()).len();
                name > 0 && rest[name..].starts_with('=')
            });
            assert!(!handler, "no inline event handlers");
        }
        assert!(page(true).contains("content=\"required\""));
    }

    #[test]
    fn the_modules_import_each_other_relatively() {
        // Relative imports resolve under the same versioned directory as the importer.
        let app = ASSETS.iter().find(|a| a.name == "app.js").unwrap().body;
        assert!(app.contains("from \"./model.js\""));
    }
}
