//! [`TestCa`]: a private certificate authority and a server certificate it signed, as PEM files,
//! for tests of TLS to PostgreSQL and Redis ([`PgServer::start_tls`](crate::PgServer::start_tls),
//! [`RedisServer::start_tls`](crate::RedisServer::start_tls)).
//!
//! The server certificate names `localhost` and `127.0.0.1`, so clients can verify the host name
//! (`sslmode=verify-full`, `rediss://`) whichever of the two they dial. Every [`TestCa`] is a new
//! key pair: a second one is the "wrong CA" that a client must refuse.

use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::{RootCertStore, pki_types::CertificateDer};
use tempfile::TempDir;
use tokio_rustls::TlsConnector;

/// A CA certificate (`ca.pem`) and a server certificate (`server.pem`) with its key
/// (`server.key`, mode 0600) that the CA signed for `localhost` and `127.0.0.1`.
///
/// The files stay where they were written; [`TestCa::new`]'s own directory is deleted on drop.
#[derive(Debug)]
pub struct TestCa {
    ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    /// Only for [`TestCa::new`].
    _dir: Option<TempDir>,
}

impl TestCa {
    /// A new CA and server certificate in a temporary directory of their own (deleted on drop).
    pub fn new() -> TestCa {
        let dir = tempfile::Builder::new()
            .prefix("testkit-tls-")
            .tempdir()
            .expect("failed to create a temporary directory for TLS files");
        let ca = Self::create_in(dir.path());
        TestCa { _dir: Some(dir), ..ca }
    }

    /// A new CA and server certificate, written to `ca.pem`, `server.pem` and `server.key` in
    /// `dir` (which must exist; existing files are replaced).
    ///
    /// Panics when a certificate cannot be made or a file cannot be written.
    pub fn create_in(dir: &Path) -> TestCa {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("no names to parse");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        // A name of its own: verifiers look the issuer up by name, and a second CA with the same
        // name would fail as a bad signature ("EVP lib" in libpq) instead of an unknown issuer.
        static SERIAL: AtomicU32 = AtomicU32::new(0);
        let name = format!("testkit CA {}-{}", std::process::id(), SERIAL.fetch_add(1, Ordering::Relaxed));
        ca_params.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate().expect("failed to generate the CA key");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("failed to self-sign the CA certificate");

        let key = KeyPair::generate().expect("failed to generate the server key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("localhost and 127.0.0.1 are valid names");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &ca).expect("failed to sign the server certificate");

        let ca_pem = ca.pem();
        let [ca_path, cert_path, key_path] = ["ca.pem", "server.pem", "server.key"].map(|name| dir.join(name));
        write(&ca_path, &ca_pem, 0o644);
        write(&cert_path, &cert.pem(), 0o644);
        // PostgreSQL refuses a key file that its group or others can read.
        write(&key_path, &key.serialize_pem(), 0o600);
        TestCa { ca_path, cert_path, key_path, ca_pem, ca_der: ca.der().clone(), _dir: None }
    }

    /// The CA certificate (PEM): what clients trust (`sslrootcert=`, a Redis CA file setting).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The server certificate (PEM), signed by the CA.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The server certificate's private key (PKCS#8 PEM, mode 0600).
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The text of `ca.pem`.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A TLS client that trusts this CA only (readiness probes and tests over TLS).
    pub(crate) fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("the CA certificate is a valid trust anchor");
        // ring explicitly, as the rest of the workspace: no process-wide default provider.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

/// The name a TLS client verifies: the servers listen on 127.0.0.1, which the certificate names.
pub(crate) fn server_name() -> rustls::pki_types::ServerName<'static> {
    IpAddr::V4(Ipv4Addr::LOCALHOST).into()
}

fn write(path: &Path, contents: &str, mode: u32) {
    // The mode applies when the file is created; an existing file keeps its own, so start fresh.
    let _ = fs::remove_file(path);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .unwrap_or_else(|err| panic!("failed to write {}: {err}", path.display()));
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_rustls::TlsAcceptor;

    use super::*;

    #[test]
    fn tls_files_are_written_with_a_private_key() {
        let ca = TestCa::new();
        assert_eq!(fs::read_to_string(ca.ca_path()).unwrap(), ca.ca_pem());
        assert!(fs::read_to_string(ca.cert_path()).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(fs::read_to_string(ca.key_path()).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(fs::metadata(ca.key_path()).unwrap().permissions().mode() & 0o777, 0o600);
        assert_ne!(ca.ca_pem(), TestCa::new().ca_pem(), "every TestCa is a new CA");
    }

    #[tokio::test]
    async fn tls_handshake_succeeds_only_with_the_signing_ca() {
        let ca = TestCa::new();
        assert!(handshake(&ca, &ca).await.is_ok());
        let err = handshake(&ca, &TestCa::new()).await.unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    /// A TLS handshake over an in-memory pipe: `server`'s certificate, a client trusting `trusted`.
    async fn handshake(server: &TestCa, trusted: &TestCa) -> Result<(), String> {
        use rustls::pki_types::{PrivateKeyDer, pem::PemObject as _};
        let certs = CertificateDer::pem_file_iter(server.cert_path()).unwrap().collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_file(server.key_path()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let serve = async {
            let mut tls = TlsAcceptor::from(Arc::new(config)).accept(server_io).await.ok()?;
            tls.write_all(b"hello").await.ok()
        };
        let connect = async {
            let mut tls = trusted.connector().connect(server_name(), client_io).await.map_err(|err| err.to_string())?;
            let mut hello = [0; 5];
            tls.read_exact(&mut hello).await.map_err(|err| err.to_string())?;
            assert_eq!(&hello, b"hello");
            Ok(())
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), async { tokio::join!(serve, connect).1 })
            .await
            .expect("the handshake finishes")
    }
}
