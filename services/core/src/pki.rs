//! Throwaway certificates: a CA and the certificates it signs (ECDSA P-256, rcgen). Used by
//! `ragd up --tls-generate` (a private CA for one laptop's services, written where the user can
//! point a client at it) and by the tests, which need real certificates, real handshakes and
//! rotations. Not a certificate authority for production: there, certificates come from the
//! operator's PKI (cert-manager, Vault, ...).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate and its private key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// A self-signed CA.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM (what clients trust).
    pub cert_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert_pem", &self.cert_pem).finish()
    }
}

fn at(unix: i64) -> Result<time::OffsetDateTime, rcgen::Error> {
    time::OffsetDateTime::from_unix_timestamp(unix).map_err(|_| rcgen::Error::Time)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

const DAY: i64 = 86_400;

impl Ca {
    /// A new CA valid from an hour ago for ten years.
    pub fn new(name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = at(now() - 3600)?;
        params.not_after = at(now() + 3650 * DAY)?;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert_pem: cert.pem(), issuer: Issuer::new(params, key) })
    }

    fn issue(
        &self,
        name: &str,
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
        not_before: i64,
        not_after: i64,
    ) -> Result<Issued, rcgen::Error> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.not_before = at(not_before)?;
        params.not_after = at(not_after)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A server certificate for `sans` (DNS names or IP addresses), valid for a year.
    pub fn leaf(&self, name: &str, sans: &[&str]) -> Result<Issued, rcgen::Error> {
        self.leaf_valid(name, sans, now() - 3600, now() + 365 * DAY)
    }

    /// A server certificate with the given validity (Unix seconds).
    pub fn leaf_valid(
        &self,
        name: &str,
        sans: &[&str],
        not_before: i64,
        not_after: i64,
    ) -> Result<Issued, rcgen::Error> {
        self.issue(name, sans, ExtendedKeyUsagePurpose::ServerAuth, not_before, not_after)
    }

    /// A client certificate (mutual TLS) whose common name is `name`, valid for a year.
    pub fn client(&self, name: &str) -> Result<Issued, rcgen::Error> {
        self.issue(name, &[], ExtendedKeyUsagePurpose::ClientAuth, now() - 3600, now() + 365 * DAY)
    }
}

/// Writes `contents` to `path` atomically (a temporary file renamed over it), so a watcher never
/// reads half a file; owner-only permissions.
pub fn write(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options.open(&tmp)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The files [`generate_dir`] writes.
pub const CA_FILE: &str = "ca.pem";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";
pub const CLIENT_CERT_FILE: &str = "client.pem";
pub const CLIENT_KEY_FILE: &str = "client-key.pem";

/// Writes a new CA, a server certificate for `hosts` and a client certificate (common name
/// `client`) into `dir`, as [`CA_FILE`], [`SERVER_CERT_FILE`], ... — the layout `ragd up
/// --tls-dir` reads.
pub fn generate_dir(dir: &Path, hosts: &[&str]) -> std::io::Result<()> {
    let e = |e: rcgen::Error| std::io::Error::other(e.to_string());
    std::fs::create_dir_all(dir)?;
    let ca = Ca::new("ragd throwaway CA").map_err(e)?;
    let server = ca.leaf("ragd", hosts).map_err(e)?;
    let client = ca.client("client").map_err(e)?;
    write(&dir.join(CA_FILE), &ca.cert_pem)?;
    write(&dir.join(SERVER_CERT_FILE), &server.cert_pem)?;
    write(&dir.join(SERVER_KEY_FILE), &server.key_pem)?;
    write(&dir.join(CLIENT_CERT_FILE), &client.cert_pem)?;
    write(&dir.join(CLIENT_KEY_FILE), &client.key_pem)
}
