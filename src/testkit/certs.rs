//! Certificates for TLS tests, generated when asked for: a CA, a server certificate it signs
//! for the names given, a client certificate for mutual TLS, and a second, unrelated CA.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// PEM files in a temporary directory, removed when dropped.
///
/// ```no_run
/// use redis_guard::testkit::{RedisServer, TestCertificates};
///
/// let certs = TestCertificates::generate(&["localhost", "127.0.0.1"]).unwrap();
/// let server = RedisServer::start_tls(&certs, false, &[]).unwrap();
/// let url = server.tls_url(); // rediss://localhost:<port>
/// ```
#[derive(Debug)]
pub struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    /// A CA, a server certificate for `server_names` (DNS names or IP addresses), a client
    /// certificate, and an unrelated CA for "unknown issuer" cases.
    pub fn generate(server_names: &[&str]) -> io::Result<TestCertificates> {
        let dir = tempfile::Builder::new()
            .prefix("redis-guard-certs-")
            .tempdir()?;
        let (ca, ca_key) = authority("redis-guard test CA")?;
        let (other_ca, _) = authority("redis-guard unrelated CA")?;
        let names: Vec<String> = server_names.iter().map(|n| (*n).to_owned()).collect();
        let server_key = KeyPair::generate().map_err(io::Error::other)?;
        let mut server = CertificateParams::new(names).map_err(io::Error::other)?;
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server
            .signed_by(&server_key, &ca, &ca_key)
            .map_err(io::Error::other)?;
        let client_key = KeyPair::generate().map_err(io::Error::other)?;
        let mut client = CertificateParams::new(Vec::<String>::new()).map_err(io::Error::other)?;
        client
            .distinguished_name
            .push(DnType::CommonName, "redis-guard test client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client
            .signed_by(&client_key, &ca, &ca_key)
            .map_err(io::Error::other)?;
        for (file, pem) in [
            ("ca.pem", ca.pem()),
            ("other-ca.pem", other_ca.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.path().join(file), pem)?;
        }
        Ok(TestCertificates { dir })
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA that signed the server and client certificates.
    pub fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }

    /// A CA that signed nothing here.
    pub fn other_ca(&self) -> PathBuf {
        self.file("other-ca.pem")
    }

    /// The server's certificate and key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.file("server.pem"), self.file("server.key"))
    }

    /// The client's certificate and key, for mutual TLS.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.file("client.pem"), self.file("client.key"))
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn authority(name: &str) -> io::Result<(rcgen::Certificate, KeyPair)> {
    let key = KeyPair::generate().map_err(io::Error::other)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(io::Error::other)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(io::Error::other)?;
    Ok((cert, key))
}
