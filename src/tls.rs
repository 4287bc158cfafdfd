//! TLS for pooled connections (feature `tls`), with rustls.
//!
//! The TLS session runs over the pool's own TCP socket, so everything the pool does on plain
//! TCP still holds: keepalive and `TCP_USER_TIMEOUT` are set on that socket, EOF and resets
//! are seen without a round trip (the peek looks at the TCP socket under the TLS session), and
//! checkout validation is unchanged. The client configuration is built once, at `build()`, so
//! a missing or unreadable file is a configuration error, not a connect error.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// How to verify the server and, for mutual TLS, who the client is.
///
/// ```
/// use redis_guard::config::TlsSettings;
/// // System roots and host-name verification: what a managed Redis needs.
/// let managed = TlsSettings::default();
/// // A private CA and a client certificate (mutual TLS).
/// let private = TlsSettings {
///     ca_file: Some("/etc/redis/ca.pem".into()),
///     client_cert: Some(("/etc/redis/client.pem".into(), "/etc/redis/client.key".into())),
///     ..TlsSettings::default()
/// };
/// # drop((managed, private));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file with the CA certificates to trust; `None` trusts the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM files with the client certificate chain and its private key, for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must be valid for, when it is not the host connected
    /// to: nodes reached by IP address whose certificates list only a DNS name, or a Sentinel
    /// deployment whose primaries share one certificate. `None` verifies the host itself.
    pub server_name: Option<String>,
    /// Accept any server certificate, for any name: encryption without authentication. Never
    /// in production: a pool with it logs a warning at start, and its URL shows `#insecure`
    /// wherever it is shown. A `rediss://...#insecure` URL needs this set as well.
    pub insecure: bool,
}

/// A built client configuration, shared by every connect of a pool.
#[derive(Clone)]
pub(crate) struct TlsClient {
    connector: tokio_rustls::TlsConnector,
    /// [`TlsSettings::server_name`], checked at build.
    server_name: Option<ServerName<'static>>,
    insecure: bool,
}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The configuration holds key material: show only what matters.
        f.debug_struct("TlsClient")
            .field("insecure", &self.insecure)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Reads the files and builds the rustls configuration; the error names the setting at
    /// fault (`tls.ca_file`, `tls.client_cert`, `tls.client_key`, `tls.server_name`) and
    /// says which file and why.
    pub(crate) fn new(settings: &TlsSettings) -> Result<TlsClient, (&'static str, String)> {
        // ring builds anywhere without cmake; it has no post-quantum key exchange, which is
        // why rustls 0.23.48 deprecates it as a default.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls", format!("TLS: {e}")))?;
        let builder = if settings.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else {
            builder.with_root_certificates(roots(settings).map_err(|e| ("tls.ca_file", e))?)
        };
        let config = match &settings.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert_file, key_file)) => {
                let chain = CertificateDer::pem_file_iter(cert_file)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| {
                        let problem = pem_problem("client certificate", cert_file, &e);
                        ("tls.client_cert", problem)
                    })?;
                let key = PrivateKeyDer::from_pem_file(key_file)
                    .map_err(|e| ("tls.client_key", pem_problem("private key", key_file, &e)))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ("tls.client_cert", client_auth_problem(cert_file, &e)))?
            }
        };
        let server_name = match &settings.server_name {
            None => None,
            Some(name) => Some(ServerName::try_from(name.clone()).map_err(|_| {
                let reason = "is not a valid DNS name or IP address".to_owned();
                ("tls.server_name", reason)
            })?),
        };
        Ok(TlsClient {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            insecure: settings.insecure,
        })
    }

    /// Whether certificates go unverified ([`TlsSettings::insecure`]).
    pub(crate) fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The TLS handshake over `tcp`, verifying the certificate for `host`. A TLS failure
    /// carries its `rustls::Error` (see [`tls_failure`]); a transport failure (a reset during
    /// the handshake) is a plain I/O error.
    pub(crate) async fn connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> io::Result<TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_owned()).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS: the host is not a valid server name; set server_name",
                )
            })?,
        };
        self.connector.connect(name, tcp).await
    }
}

fn roots(settings: &TlsSettings) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match &settings.ca_file {
        Some(file) => {
            let certs = CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| pem_problem("CA certificate", file, &e))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("CA file {file:?} holds no usable certificate"));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "no system root certificates found; install ca-certificates or set ca_file"
                        .into(),
                );
            }
        }
    }
    Ok(roots)
}

/// What is wrong with a PEM file, in words that never quote it: the PEM parser's own messages
/// repeat the line it choked on, and for a key file that line is the key.
/// Why a client certificate and key pair was refused; rustls's words here name the problem,
/// never key material.
fn client_auth_problem(cert_file: &Path, error: &rustls::Error) -> String {
    let file = cert_file.display();
    match error {
        rustls::Error::InconsistentKeys(_) => {
            format!("the client certificate in {file} and its private key do not match")
        }
        rustls::Error::InvalidCertificate(_) => format!(
            "the client certificate in {file} cannot be used ({error}); only X.509 v3 \
             certificates are accepted (openssl x509 -req makes v1 unless given -extfile with \
             v3 extensions)"
        ),
        other => format!("the client certificate in {file} cannot be used: {other}"),
    }
}

fn pem_problem(what: &str, file: &Path, error: &pem::Error) -> String {
    let file = file.display();
    match error {
        pem::Error::Io(e) => format!("cannot read the {what} file {file}: {}", e.kind()),
        pem::Error::NoItemsFound => {
            format!("{file} holds no PEM {what} (no -----BEGIN ...----- section of that kind)")
        }
        pem::Error::SectionTooLarge => format!("{file}: a PEM section is too large"),
        // Malformed sections, bad base64, and whatever a later version adds.
        _ => format!(
            "{file} is not a valid PEM {what}: are the line breaks intact? (a PEM file has a \
             -----BEGIN----- line, base64 lines, and an -----END----- line; keys pasted into \
             environment variables often lose the breaks)"
        ),
    }
}

/// If `error` (or what it wraps) is a TLS failure, the failure in words: which check failed,
/// not rustls's enum. Alerts can arrive after the handshake (TLS 1.3 reports a refused client
/// certificate on the first read), so this also looks inside redis-rs's I/O errors.
pub(crate) fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        if let Some(tls) = e
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(describe(tls));
        }
        current = e.source();
    }
    None
}

fn describe(tls: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let cause = match tls {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate is not signed by a trusted CA (unknown issuer); set \
             ca_file to the CA that signed it"
                .to_owned()
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate is not valid for this host name; connect by a name the \
              certificate lists"
            .to_owned(),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".to_owned(),
        Error::AlertReceived(AlertDescription::CertificateRequired)
        | Error::AlertReceived(AlertDescription::HandshakeFailure)
        | Error::AlertReceived(AlertDescription::BadCertificate) => format!(
            "the server refused the handshake ({tls}); it may require a client certificate \
             (client_cert)"
        ),
        other => other.to_string(),
    };
    format!("TLS handshake failed: {cause}")
}

/// Accepts any certificate (`insecure`), still checking the handshake's signatures so the
/// session itself is sound.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
