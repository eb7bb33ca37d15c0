//! TLS on every ragd hop, with rustls (ring; no OpenSSL).
//!
//! Servers: [`ServerTlsArgs`] (`--tls-cert`, `--tls-key`, optional `--tls-client-ca` for mutual
//! TLS) load into a [`ServerTls`] whose certificate, key and client CA are re-read when their
//! files change ([`crate::watch`]): each new handshake takes the configuration in force, calls
//! already running keep their connection. TLS 1.2 and 1.3 only, ALPN `h2` (gRPC) and `http/1.1`
//! (the metrics listener). [`incoming`] turns a TCP listener into the connections a server
//! serves: handshakes run concurrently, each with a time limit, so a slow or silent client
//! cannot hold up the accept loop; a client that speaks plaintext to a TLS port is still served
//! — every call it makes is answered UNAVAILABLE saying that the port speaks TLS (see
//! [`crate::auth::SecurityLayer`]) — rather than seeing a reset connection.
//!
//! Clients: [`ClientTlsArgs`] (`--upstream-tls*`) build a [`ClientTls`] used by
//! [`crate::net::Connector`] for `https://` URLs (or every URL with `--upstream-tls`): the CA
//! to trust (default: the system's roots), an optional client certificate for mutual TLS and a
//! server-name override.
//!
//! Bad material fails at start-up with one line naming the file ([`TlsError`]): a missing or
//! unreadable file, no certificate or key in it, a key that does not match the certificate, a
//! certificate outside its validity period, an empty CA bundle.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

use crate::net::{Coalesce, MaybeTls};
use crate::watch::Watched;

/// How long a client has to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A start-up error of TLS material, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {what}", path.display())]
    File { path: PathBuf, what: String },
    #[error("tls: {0}")]
    Config(String),
}

fn file_error(path: &Path, what: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), what: what.to_string() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Reads a PEM certificate chain; refuses an empty one and a certificate outside its validity.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read certificate: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate (BEGIN CERTIFICATE) in the file"));
    }
    let now = chrono::Utc::now().timestamp();
    for (i, c) in certs.iter().enumerate() {
        let Some((not_before, not_after)) = validity(c) else {
            return Err(file_error(
                path,
                format!("certificate {} is not a readable X.509 certificate", i + 1),
            ));
        };
        if now > not_after {
            return Err(file_error(path, format!("certificate {} expired at {}", i + 1, utc(not_after))));
        }
        if now < not_before {
            return Err(file_error(
                path,
                format!("certificate {} is not valid before {}", i + 1, utc(not_before)),
            ));
        }
    }
    Ok(certs)
}

fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).map_or_else(|| t.to_string(), |d| d.to_rfc3339())
}

/// Reads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read private key: {e}")))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_error(path, format!("no PEM private key in the file: {e}")))
}

/// Reads a PEM CA bundle into a root store.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The TLS settings of a server (every ragd service and its metrics listener).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// Serve TLS with this PEM certificate chain (with --tls-key). Re-read when the file
    /// changes: new connections use the new certificate, open ones are not disturbed.
    #[arg(long = "tls-cert", env = "RAGD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long = "tls-key", env = "RAGD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: require a client certificate signed by a CA in this PEM bundle.
    #[arg(long = "tls-client-ca", env = "RAGD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some()
    }
}

/// A server's TLS configuration in force (reloaded when its files change).
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Watched<rustls::ServerConfig>,
    mutual: bool,
}

fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let chain = load_certs(cert)?;
    let key_der = load_key(key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(load_roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| file_error(ca, format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key_der).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            file_error(key, format!("the private key does not match the certificate in {}", cert.display()))
        }
        e => file_error(key, format!("cannot use the key with {}: {e}", cert.display())),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl ServerTls {
    /// Loads the files (errors name the file) and keeps them current; `None` when TLS is off.
    pub fn start(args: &ServerTlsArgs) -> Result<Option<Self>, TlsError> {
        let (Some(cert), Some(key)) = (args.tls_cert.clone(), args.tls_key.clone()) else {
            return Ok(None);
        };
        let ca = args.tls_client_ca.clone();
        let mut paths = vec![cert.clone(), key.clone()];
        paths.extend(ca.clone());
        let mutual = ca.is_some();
        let config = Watched::start("tls", paths, move || server_config(&cert, &key, ca.as_deref()))?;
        Ok(Some(Self { config, mutual }))
    }

    /// Whether clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.get())
    }
}

/// What a server knows of a connection: the peer's address, whether it speaks TLS, and the
/// certificate chain it presented (mutual TLS). In every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    /// The connection speaks TLS.
    pub tls: bool,
    /// A plaintext connection to a port that requires TLS (its calls are refused).
    pub tls_required: bool,
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

/// A connection accepted by a ragd server: plaintext or TLS, its writes [`Coalesce`]d (above
/// TLS: see [`MaybeTls`]);
/// `tls_required` marks a plaintext connection to a TLS port (its calls are refused).
#[derive(Debug)]
pub struct ServerIo {
    io: MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>,
    tls_required: bool,
}

impl Connected for ServerIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match &self.io {
            MaybeTls::Plain(io) => ConnInfo {
                remote: io.get_ref().peer_addr().ok(),
                tls: false,
                tls_required: self.tls_required,
                peer_certs: None,
            },
            MaybeTls::Tls(s) => {
                let (io, session) = s.get_ref().get_ref();
                ConnInfo {
                    remote: io.peer_addr().ok(),
                    tls: true,
                    tls_required: false,
                    peer_certs: session.peer_certificates().map(|c| Arc::new(c.to_vec())),
                }
            }
        }
    }
}

impl ServerIo {
    fn plain(stream: TcpStream, tls_required: bool) -> Self {
        Self { io: MaybeTls::Plain(Coalesce::new(stream)), tls_required }
    }

    /// The peer's address.
    pub fn remote(&self) -> Option<SocketAddr> {
        self.connect_info().remote
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// One accepted TCP connection, made ready: TCP_NODELAY, and with TLS the handshake (or, for a
/// client that opens in plaintext, a plaintext connection marked `tls_required`).
async fn prepare(stream: TcpStream, tls: Option<ServerTls>) -> io::Result<ServerIo> {
    stream.set_nodelay(true)?;
    let Some(tls) = tls else {
        return Ok(ServerIo::plain(stream, false));
    };
    let mut first = [0u8; 1];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client sent nothing"))??;
    // 0x16: a TLS handshake record. Anything else (an HTTP/2 preface) is plaintext.
    if first[0] != 0x16 {
        return Ok(ServerIo::plain(stream, true));
    }
    let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "tls handshake timed out"))??;
    Ok(ServerIo { io: MaybeTls::Tls(Box::new(Coalesce::new(s))), tls_required: false })
}

/// The connections of `listener`, plaintext or (with `tls`) TLS; see the module docs. Accept
/// errors and failed handshakes are logged and skipped; the stream ends when its consumer drops
/// it.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
) -> impl futures::Stream<Item = io::Result<ServerIo>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<ServerIo>>(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                match prepare(stream, tls).await {
                    Ok(io) => {
                        let _ = tx.send(Ok(io)).await;
                    }
                    Err(e) => tracing::debug!(%peer, error = %e, "connection dropped before it was ready"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// An axum listener over [`incoming`] (the metrics listener, plaintext or TLS).
pub struct HttpListener {
    stream: Pin<Box<dyn futures::Stream<Item = io::Result<ServerIo>> + Send>>,
    local: SocketAddr,
}

impl std::fmt::Debug for HttpListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpListener").field("local", &self.local).finish()
    }
}

impl HttpListener {
    pub fn new(listener: TcpListener, tls: Option<ServerTls>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        Ok(Self { stream: Box::pin(incoming(listener, tls)), local })
    }
}

impl axum::serve::Listener for HttpListener {
    type Io = ServerIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (ServerIo, SocketAddr) {
        use futures::StreamExt;
        loop {
            match self.stream.next().await {
                Some(Ok(io)) => {
                    let peer = io.remote().unwrap_or(self.local);
                    return (io, peer);
                }
                Some(Err(e)) => tracing::debug!(error = %e, "metrics connection failed"),
                // The accept task only ends when this stream is dropped.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// The TLS settings of a client hop (indexer → embedder, generator → indexer, the CLI,
/// loadgen).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// Speak TLS to upstream services even where their URL says http:// (members discovered
    /// through etcd register https:// URLs themselves when they serve TLS).
    #[arg(long = "upstream-tls", env = "RAGD_UPSTREAM_TLS", global = true)]
    pub upstream_tls: bool,
    /// PEM CA bundle that upstream servers' certificates must chain to (default: the system's
    /// roots).
    #[arg(long = "upstream-tls-ca", env = "RAGD_UPSTREAM_TLS_CA", global = true)]
    pub upstream_tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --upstream-tls-key).
    #[arg(
        long = "upstream-tls-cert",
        env = "RAGD_UPSTREAM_TLS_CERT",
        requires = "upstream_tls_key",
        global = true
    )]
    pub upstream_tls_cert: Option<PathBuf>,
    /// PEM private key of --upstream-tls-cert.
    #[arg(
        long = "upstream-tls-key",
        env = "RAGD_UPSTREAM_TLS_KEY",
        requires = "upstream_tls_cert",
        global = true
    )]
    pub upstream_tls_key: Option<PathBuf>,
    /// Name to verify upstream certificates against instead of the URL's host.
    #[arg(long = "upstream-tls-server-name", env = "RAGD_UPSTREAM_TLS_SERVER_NAME", global = true)]
    pub upstream_tls_server_name: Option<String>,
}

/// A client's TLS configuration (see [`ClientTlsArgs`]).
#[derive(Clone)]
pub struct ClientTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// TLS for every URL, not only https:// ones.
    always: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("always", &self.always)
            .finish()
    }
}

impl ClientTls {
    /// The client configuration; with no CA given, the system's roots.
    pub fn new(args: &ClientTlsArgs) -> Result<Self, TlsError> {
        let roots = match &args.upstream_tls_ca {
            Some(ca) => load_roots(ca)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                for c in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(c);
                }
                roots
            }
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match (&args.upstream_tls_cert, &args.upstream_tls_key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| file_error(key, format!("cannot use the key with {}: {e}", cert.display())))?,
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let server_name = match &args.upstream_tls_server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| TlsError::Config(format!("--upstream-tls-server-name {n:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            always: args.upstream_tls,
        })
    }

    /// TLS for every URL, not only `https://` ones (`--upstream-tls`).
    pub fn always(&self) -> bool {
        self.always
    }

    /// Handshakes over `stream` with the server named by `host` (or the override).
    pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        host: &str,
        stream: S,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host.to_string()).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("server name {host:?}: {e}"))
            })?,
        };
        self.connector.connect(name, stream).await
    }
}

/// Minimal DER reading: the content of the element with `tag` at the start of `b`, and what
/// follows it.
fn der_take(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *b.first()? != tag {
        return None;
    }
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let len = b.get(2..2 + n)?.iter().fold(0usize, |acc, x| (acc << 8) | *x as usize);
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((b.get(header..end)?, b.get(end..)?))
}

fn der_time(b: &[u8]) -> Option<(i64, &[u8])> {
    let (tag, format) = match *b.first()? {
        0x17 => (0x17, "%y%m%d%H%M%SZ"),
        0x18 => (0x18, "%Y%m%d%H%M%SZ"),
        _ => return None,
    };
    let (content, rest) = der_take(b, tag)?;
    let s = std::str::from_utf8(content).ok()?;
    let t = chrono::NaiveDateTime::parse_from_str(s, format).ok()?;
    Some((t.and_utc().timestamp(), rest))
}

/// What follows the issuer in a DER X.509 certificate's TBSCertificate: validity, subject, ...
fn after_issuer(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = der_take(cert, 0x30)?;
    let (tbs, _) = der_take(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_take(rest, 0xa0)?.1; // version
    }
    rest = der_take(rest, 0x02)?.1; // serial number
    rest = der_take(rest, 0x30)?.1; // signature algorithm
    Some(der_take(rest, 0x30)?.1) // issuer
}

/// The subject's common name (OID 2.5.4.3) of a DER X.509 certificate.
pub fn subject_cn(cert: &[u8]) -> Option<String> {
    let rest = der_take(after_issuer(cert)?, 0x30)?.1; // validity
    let (mut rdns, _) = der_take(rest, 0x30)?; // subject: SEQUENCE OF SET OF AttributeTypeAndValue
    while !rdns.is_empty() {
        let (set, next) = der_take(rdns, 0x31)?;
        rdns = next;
        let (atv, _) = der_take(set, 0x30)?;
        let (oid, value) = der_take(atv, 0x06)?;
        if oid == [0x55, 0x04, 0x03] {
            // UTF8String, PrintableString or IA5String.
            let tag = *value.first()?;
            let (s, _) = der_take(value, tag)?;
            return std::str::from_utf8(s).ok().map(str::to_string);
        }
    }
    None
}

/// The validity period (not before, not after; Unix seconds) of a DER X.509 certificate.
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (validity, _) = der_take(after_issuer(cert)?, 0x30)?;
    let (not_before, rest) = der_time(validity)?;
    let (not_after, _) = der_time(rest)?;
    Some((not_before, not_after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, write};

    #[test]
    fn validity_is_read_from_the_certificate() {
        let ca = Ca::new("test ca").expect("ca");
        let leaf = ca.leaf_valid("svc", &["localhost"], 1_700_000_000, 1_900_000_000).expect("leaf");
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).expect("pem");
        assert_eq!(validity(&der), Some((1_700_000_000, 1_900_000_000)));
        // GeneralizedTime after 2049.
        let late = ca.leaf_valid("svc", &["localhost"], 1_700_000_000, 2_600_000_000).expect("leaf");
        let der = CertificateDer::from_pem_slice(late.cert_pem.as_bytes()).expect("pem");
        assert_eq!(validity(&der).map(|v| v.1), Some(2_600_000_000));
        assert_eq!(validity(b"\x30\x03\x02\x01\x01"), None);
    }

    #[test]
    fn the_subject_common_name_is_read_from_the_certificate() {
        let ca = Ca::new("test ca").expect("ca");
        let c = ca.client("indexer-7").expect("client");
        let der = CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).expect("pem");
        assert_eq!(subject_cn(&der).as_deref(), Some("indexer-7"));
        let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).expect("pem");
        assert_eq!(subject_cn(&ca_der).as_deref(), Some("test ca"));
        assert_eq!(subject_cn(b"\x30\x00"), None);
    }

    #[test]
    fn bad_material_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("test ca").expect("ca");
        let good = ca.leaf("svc", &["localhost"]).expect("leaf");
        let other = ca.leaf("other", &["localhost"]).expect("leaf");
        let expired = ca.leaf_valid("old", &["localhost"], 1_000_000_000, 1_100_000_000).expect("leaf");
        let p = |n: &str| dir.path().join(n);
        write(&p("cert.pem"), &good.cert_pem).expect("write");
        write(&p("key.pem"), &good.key_pem).expect("write");
        write(&p("other-key.pem"), &other.key_pem).expect("write");
        write(&p("expired.pem"), &expired.cert_pem).expect("write");
        write(&p("expired-key.pem"), &expired.key_pem).expect("write");
        write(&p("garbage.pem"), "hello").expect("write");
        let args = |cert: &str, key: &str| ServerTlsArgs {
            tls_cert: Some(p(cert)),
            tls_key: Some(p(key)),
            tls_client_ca: None,
        };
        let err = |a: ServerTlsArgs| ServerTls::start(&a).expect_err("must fail").to_string();
        assert!(ServerTls::start(&args("cert.pem", "key.pem")).expect("good").is_some());
        let e = err(args("missing.pem", "key.pem"));
        assert!(e.contains("missing.pem") && e.contains("cannot read certificate"), "{e}");
        let e = err(args("cert.pem", "other-key.pem"));
        assert!(e.contains("other-key.pem") && e.contains("does not match"), "{e}");
        let e = err(args("expired.pem", "expired-key.pem"));
        assert!(e.contains("expired.pem") && e.contains("expired at 2004"), "{e}");
        let e = err(args("garbage.pem", "key.pem"));
        assert!(e.contains("garbage.pem") && e.contains("no PEM certificate"), "{e}");
        let e = err(args("cert.pem", "garbage.pem"));
        assert!(e.contains("garbage.pem") && e.contains("private key"), "{e}");
        let e = err(ServerTlsArgs { tls_client_ca: Some(p("garbage.pem")), ..args("cert.pem", "key.pem") });
        assert!(e.contains("garbage.pem"), "{e}");
        let e = ClientTls::new(&ClientTlsArgs { upstream_tls_ca: Some(p("nope.pem")), ..Default::default() })
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("nope.pem"), "{e}");
    }
}
