//! TLS for the replication connection. pgwire-replication is built without its own TLS (its
//! `tls-rustls` feature turns on rustls's aws-lc-rs provider for the whole build and trusts
//! webpki-roots, not the system store), so the publisher makes the TLS connection itself, with
//! the same rules as sqlx's (`sslmode`, `sslrootcert`, the system store), and hands the
//! replication client a Unix socket in a private directory (mode 0700) whose one connection it
//! splices to the TLS stream. The handshake happens before the client connects, so a refused
//! certificate is the session's error, with its fix.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UnixListener},
    task::JoinHandle,
};
use tracing::debug;

use pgwire_replication::PgWireError;

use crate::relay::SessionError;

/// How `sslmode` asks for TLS (libpq's meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    /// TLS if the server offers it, without checking its certificate.
    Prefer,
    /// TLS, without checking the certificate.
    Require,
    /// TLS, the certificate chaining to a trusted CA, any host name.
    VerifyCa,
    /// TLS, the certificate chaining to a trusted CA and naming the host.
    VerifyFull,
}

/// The socket the replication client connects to, while it lives.
pub(super) struct Tunnel {
    dir: PathBuf,
    splice: JoinHandle<()>,
}

impl Tunnel {
    /// Connects to `host:port` with TLS as `mode` asks, then listens for the replication
    /// client in a private directory: the directory is [`Tunnel::socket_dir`], the port 5432.
    pub(super) async fn open(
        host: &str,
        port: u16,
        mode: SslMode,
        root_cert: Option<&Path>,
    ) -> Result<Self, SessionError> {
        let failed = |what: String| SessionError::Capture(format!("replication connection to {host}:{port}: {what}"));
        let io = |e: std::io::Error| SessionError::Replication(PgWireError::Io(Arc::new(e)));
        let mut tcp = TcpStream::connect((host, port)).await.map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        // SSLRequest: length 8, code 1234.5679.
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.map_err(io)?;
        let mut answer = [0_u8; 1];
        tcp.read_exact(&mut answer).await.map_err(io)?;
        let dir = private_dir().map_err(|e| failed(format!("cannot make a private socket directory: {e}")))?;
        let listener = UnixListener::bind(dir.join(".s.PGSQL.5432"))
            .map_err(|e| failed(format!("cannot listen in {}: {e}", dir.display())))?;
        let splice = match answer[0] {
            b'S' => {
                let config = client_config(mode, root_cert).map_err(failed)?;
                let name = ServerName::try_from(host.to_owned()).map_err(|e| failed(format!("bad host name: {e}")))?;
                // Retried like sqlx's certificate errors (the retry's log line names the fix): a
                // server's certificate is often replaced while clients keep running.
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| SessionError::Replication(PgWireError::Tls(e.to_string())))?;
                tokio::spawn(splice(listener, tls))
            }
            b'N' if mode == SslMode::Prefer => tokio::spawn(splice(listener, tcp)),
            b'N' => {
                return Err(SessionError::Replication(PgWireError::Tls(
                    "server does not support TLS (replication connection), and sslmode asks for it".into(),
                )));
            }
            other => return Err(failed(format!("unexpected answer {other:#x} to the TLS request"))),
        };
        Ok(Self { dir, splice })
    }

    /// The directory (a "host" to the replication client) holding the socket.
    pub(super) fn socket_dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.splice.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Accepts the one connection, then copies both ways until either side closes.
async fn splice<S>(listener: UnixListener, mut server: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok((mut client, _)) = listener.accept().await else { return };
    drop(listener);
    let copied = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    debug!(?copied, "replication tunnel closed");
}

/// A new directory only this user may enter.
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("orders-publisher-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a leftover of a killed process with this pid
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// rustls settings for `mode`: the CA of `root_cert`, or the system's store.
fn client_config(mode: SslMode, root_cert: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = if matches!(mode, SslMode::Prefer | SslMode::Require) {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { inner: None, check_name: false, provider }))
            .with_no_client_auth()
    } else {
        let roots = Arc::new(roots(root_cert)?);
        let inner =
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| e.to_string())?;
        let check_name = mode == SslMode::VerifyFull;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { inner: Some(inner), check_name, provider }))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

fn roots(root_cert: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            roots.add_parsable_certificates(certs);
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to verify the server with: add sslrootcert=/path/to/ca.pem".into());
    }
    Ok(roots)
}

/// libpq's checks: none (`require`), the chain only (`verify-ca`), or the chain and the name.
#[derive(Debug)]
struct Verifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError as C, Error as E};
        let Some(inner) = &self.inner else { return Ok(ServerCertVerified::assertion()) };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. })) if !self.check_name => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use testkit::{PgServer, TestCa};

    use super::*;

    fn tls_error(result: Result<Tunnel, SessionError>) -> String {
        match result {
            Err(SessionError::Replication(PgWireError::Tls(text))) => text,
            Err(other) => panic!("not a TLS error: {other:?}"),
            Ok(_) => panic!("the handshake succeeded"),
        }
    }

    #[tokio::test]
    async fn the_handshake_checks_what_sslmode_asks_and_names_what_failed() {
        let (pg, plain) = tokio::join!(PgServer::start_tls(), PgServer::start());
        let ca = pg.tls_ca_path().expect("tls");
        let other = TestCa::new();

        let tunnel = Tunnel::open("127.0.0.1", pg.port(), SslMode::VerifyFull, Some(ca)).await.expect("verified");
        assert!(tunnel.socket_dir().join(".s.PGSQL.5432").exists(), "the client's socket");
        let dir = tunnel.socket_dir().to_owned();
        drop(tunnel);
        assert!(!dir.exists(), "the private directory goes with the tunnel");

        let unknown = tls_error(Tunnel::open("127.0.0.1", pg.port(), SslMode::VerifyCa, Some(other.ca_path())).await);
        assert!(unknown.contains("UnknownIssuer"), "{unknown}");
        assert!(protocol::retry::tls_fix("postgres", &unknown).unwrap().contains("sslrootcert="));
        // require encrypts without checking the certificate, as libpq's does.
        Tunnel::open("127.0.0.1", pg.port(), SslMode::Require, Some(other.ca_path())).await.expect("not checked");

        let refused = tls_error(Tunnel::open("127.0.0.1", plain.port(), SslMode::Require, None).await);
        assert!(protocol::retry::tls_fix("postgres", &refused).unwrap().contains("enable ssl"), "{refused}");
        // prefer takes the plain connection a server without TLS offers.
        Tunnel::open("127.0.0.1", plain.port(), SslMode::Prefer, None).await.expect("plain");
    }
}
