//! The one HTTP request `check` makes of the publisher and each ws-server: `GET` a path, read
//! the status and the body. HTTP/1.1 with `Connection: close`, over TLS for `https://`; enough
//! for `/readyz` and `/metrics`, no client library needed.

use std::{io, sync::Arc, time::Duration};

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::http::Uri;

use crate::tls;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(super) enum HttpError {
    #[error("connection refused (nothing listens there)")]
    Refused,
    #[error("no answer within {}s", .0.as_secs())]
    Timeout(Duration),
    #[error("not an http:// or https:// URL: {0}")]
    BadUrl(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not an HTTP response")]
    Garbled,
}

/// `http(s)://host:port/readyz` for a `ws(s)://host:port/…` URL.
pub(super) fn readyz_url(ws_url: &str) -> Option<String> {
    let uri: Uri = ws_url.parse().ok()?;
    let scheme = match uri.scheme_str()? {
        "ws" => "http",
        "wss" => "https",
        _ => return None,
    };
    Some(format!("{scheme}://{}/readyz", uri.authority()?))
}

/// `GET url`: its status and body, within `limit`.
pub(super) async fn get(
    url: &str,
    tls_config: Option<&Arc<rustls::ClientConfig>>,
    limit: Duration,
) -> Result<(u16, String), HttpError> {
    tokio::time::timeout(limit, fetch(url, tls_config)).await.map_err(|_| HttpError::Timeout(limit))?
}

async fn fetch(url: &str, tls_config: Option<&Arc<rustls::ClientConfig>>) -> Result<(u16, String), HttpError> {
    let uri: Uri = url.parse().map_err(|_| HttpError::BadUrl(url.to_owned()))?;
    let secure = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(HttpError::BadUrl(url.to_owned())),
    };
    let host = uri.host().ok_or_else(|| HttpError::BadUrl(url.to_owned()))?.to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port)).await.map_err(|e| match e.kind() {
        io::ErrorKind::ConnectionRefused => HttpError::Refused,
        _ => HttpError::Io(e),
    })?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    if !secure {
        return exchange(tcp, &request).await;
    }
    let config = match tls_config {
        Some(config) => config.clone(),
        None => tls::client_config(None).map_err(|e| HttpError::Tls(e.to_string()))?,
    };
    let name =
        ServerName::try_from(host.trim_matches(['[', ']']).to_owned()).map_err(|e| HttpError::Tls(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| HttpError::Tls(tls::certificate_problem(&e).unwrap_or_else(|| e.to_string())))?;
    exchange(stream, &request).await
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, request: &str) -> Result<(u16, String), HttpError> {
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    // Bounded: /metrics is a few kilobytes; nothing here needs more than a megabyte.
    (&mut stream).take(1 << 20).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(HttpError::Garbled)?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(HttpError::Garbled)?;
    // Chunked bodies would carry length lines; these endpoints send Content-Length, and
    // the parsing of /metrics skips lines it does not know anyway.
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_lives_beside_the_websocket() {
        assert_eq!(readyz_url("ws://h:8080/ws").as_deref(), Some("http://h:8080/readyz"));
        assert_eq!(readyz_url("wss://h/ws?x=1").as_deref(), Some("https://h/readyz"));
        assert_eq!(readyz_url("http://h/ws"), None);
    }

    #[tokio::test]
    async fn a_refused_connection_says_so() {
        let err = get("http://127.0.0.1:1/readyz", None, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, HttpError::Refused), "{err:?}");
    }
}
