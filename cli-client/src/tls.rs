//! TLS for `wss://` URLs: which certificate authorities are trusted, and what a refused
//! certificate means in words a person can act on.
//!
//! Trusted: the system's store (through `rustls-native-certs`, which, like OpenSSL, reads
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` instead when they are set), plus every certificate in
//! `--ca-file` (a private CA, PEM). rustls with the `ring` provider: no C toolchain needed.

use std::{error::Error as StdError, path::Path, sync::Arc};

use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `--ca-file` cannot be read or holds no certificate.
    #[error("--ca-file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No certificate authority at all to trust.
    #[error(
        "no trusted certificate authorities: the system store is empty or unreadable ({0}); install \
         ca-certificates, or pass --ca-file / SSL_CERT_FILE"
    )]
    NoRoots(String),
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client settings for `wss://`: the system store plus the certificates in `ca_file`.
///
/// # Errors
/// `ca_file` cannot be read or holds no PEM certificate; nothing at all is trusted.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let fail = |reason: String| TlsSetupError::CaFile { path: shown.clone(), reason };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(format!("cannot read it: {e}")))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("not a PEM certificate file: {e}")))?;
        if certs.is_empty() {
            return Err(fail("holds no certificate (expected -----BEGIN CERTIFICATE-----)".to_owned()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| fail(format!("a certificate in it is unusable: {e}")))?;
        }
    } else if added == 0 {
        let why = native.errors.first().map_or_else(|| "no certificates found".to_owned(), ToString::to_string);
        return Err(TlsSetupError::NoRoots(why));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(Arc::new(config.with_no_client_auth()))
}

/// The certificate problem somewhere in `err`'s chain of causes, as one sentence with the fix;
/// `None` when the error is not about a certificate.
pub fn certificate_problem(err: &(dyn StdError + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(err) = cause {
        if let Some(rustls::Error::InvalidCertificate(problem)) = err.downcast_ref::<rustls::Error>() {
            return Some(explain(problem));
        }
        // tokio-rustls wraps rustls errors in io::Error; `source` does not always reach it.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(rustls::Error::InvalidCertificate(problem)) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(explain(problem));
        }
        cause = err.source();
    }
    None
}

fn explain(problem: &CertificateError) -> String {
    match problem {
        CertificateError::UnknownIssuer => "the server's certificate was issued by an unknown authority (unknown \
                                            issuer); if it is a private CA, pass its certificate with --ca-file \
                                            ca.pem (or SSL_CERT_FILE)"
            .to_owned(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let detail = match problem {
                CertificateError::NotValidForNameContext { expected, presented } => {
                    format!(" (asked for {expected:?}; it is for {})", presented.join(", "))
                }
                _ => String::new(),
            };
            format!(
                "the server's certificate is for another name (name mismatch){detail}; connect with a host name the \
                 certificate lists, or reissue it with this one"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "the server's certificate has expired; renew it on the server (or check this machine's clock)".to_owned()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "the server's certificate is not valid yet; check this machine's clock, or the certificate's dates"
                .to_owned()
        }
        other => format!("the server's certificate was refused ({other:?}); check the certificate on the server"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_problems_say_which_and_how_to_fix() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let text = certificate_problem(&io).unwrap();
        assert!(text.contains("unknown issuer") && text.contains("--ca-file"), "{text}");
        let expired = rustls::Error::InvalidCertificate(CertificateError::Expired);
        assert!(certificate_problem(&expired).unwrap().contains("expired"));
        let name = rustls::Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(certificate_problem(&name).unwrap().contains("name mismatch"));
        assert_eq!(certificate_problem(&std::io::Error::other("refused")), None);
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "hello").unwrap();
        let err = client_config(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("ca.pem") && err.contains("no certificate"), "{err}");
        let err = client_config(Some(&dir.path().join("missing.pem"))).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
