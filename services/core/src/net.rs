//! ragd's TCP transport for gRPC: write coalescing on both ends of a connection.
//!
//! HTTP/2 sends a unary RPC as several frames — the client HEADERS, DATA and an empty
//! END_STREAM DATA frame; the server HEADERS + DATA and then the trailers — and hyper queues
//! them from the stream's task while the connection's task, often running at the same moment on
//! another worker thread, writes out whatever is queued. So one small RPC went out as five
//! `writev`s and five TCP segments on loopback (measured with strace under the search bench),
//! each one a trip through the kernel's TCP stack and a wake-up of the reader.
//!
//! [`Coalesce`] buffers what the connection writes and, before a flush, lets the scheduler run
//! the other ready tasks once (`tokio::task::yield_now`), so frames queued by the stream task in
//! the meantime leave in the same `write`. One scheduler turn is the only delay it adds, and the
//! buffer is written out whenever it exceeds [`HIGH_WATER`] bytes. Used by every ragd server
//! ([`crate::grpc::incoming`]) and client ([`crate::client::endpoint`] + [`Connector`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Buffered bytes above which a write goes out without waiting for a flush.
pub const HIGH_WATER: usize = 256 * 1024;

type Pause = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

/// A byte stream whose writes are buffered until a flush, which first yields once to the
/// scheduler (see the module docs).
pub struct Coalesce<T> {
    io: T,
    buf: Vec<u8>,
    written: usize,
    pause: Option<Pause>,
    paused: bool,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Coalesce<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesce")
            .field("io", &self.io)
            .field("buffered", &(self.buf.len() - self.written))
            .finish()
    }
}

impl<T> Coalesce<T> {
    pub fn new(io: T) -> Self {
        Self { io, buf: Vec::new(), written: 0, pause: None, paused: false }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes the whole buffer to the inner stream.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if self.buf.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() {
            if !self.paused {
                let pause = self.pause.get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
                self.paused = true;
            }
            ready!(self.poll_drain(cx))?;
            self.paused = false;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Coalesce<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T> Coalesce<T> {
    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

/// A connection whose writes are [`Coalesce`]d, plaintext or TLS (`T`: rustls' client or server
/// stream over TCP). With TLS the buffer sits above the TLS stream, so what one flush sends is
/// encrypted in one go (one record where it fits) and leaves in one write. (Measured against
/// the buffer below TLS with the security bench: no difference in the TLS/plaintext ratio,
/// docs/benchmarks.md.) Clients use it as [`ClientIo`], servers inside [`crate::tls::ServerIo`].
#[derive(Debug)]
pub enum MaybeTls<T> {
    Plain(Coalesce<TcpStream>),
    Tls(Box<Coalesce<T>>),
}

/// A client connection.
pub type ClientIo = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

impl<T: AsyncRead + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, data),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The client side: a TCP connector (TCP_NODELAY) for `tonic`'s `Endpoint::connect_with_connector`
/// whose connections are [`Coalesce`]d, with TLS for `https://` URLs (or every URL, with
/// `--upstream-tls`) when given a [`crate::tls::ClientTls`].
///
/// tonic is handed the URL as `http://` (see [`crate::client::endpoint_for`]): where another
/// crate in the build enables one of tonic's TLS features, tonic refuses an `https://` URL
/// whose endpoint has no tonic TLS config, before the connector runs. The connector remembers
/// the original scheme instead.
#[derive(Clone, Debug, Default)]
pub struct Connector {
    tls: Option<crate::tls::ClientTls>,
    https: bool,
}

impl Connector {
    /// A connector for a URL that said `https://` (`https`) or not.
    pub fn new(tls: Option<crate::tls::ClientTls>, https: bool) -> Self {
        Self { tls, https }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<ClientIo>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (tls, https) = (self.tls.clone(), self.https);
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            match tls.filter(|t| https || t.always()) {
                Some(t) => {
                    Ok(TokioIo::new(MaybeTls::Tls(Box::new(Coalesce::new(t.connect(&host, stream).await?)))))
                }
                None if https => Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{host}:{port}: https:// needs TLS settings (--upstream-tls-ca or the system roots)"
                    ),
                )),
                None => Ok(TokioIo::new(MaybeTls::Plain(Coalesce::new(stream)))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_for_the_flush_and_leave_whole() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = Coalesce::new(a);
        w.write_all(b"hello ").await.expect("io");
        w.write_all(b"world").await.expect("io");
        let mut probe = [0u8; 16];
        let nothing = tokio::time::timeout(std::time::Duration::from_millis(50), b.read(&mut probe)).await;
        assert!(nothing.is_err(), "nothing is written before a flush");
        w.flush().await.expect("io");
        let n = b.read(&mut probe).await.expect("io");
        assert_eq!(&probe[..n], b"hello world", "both writes leave in one piece");
    }

    #[tokio::test]
    async fn large_writes_go_out_past_the_high_water_mark_and_arrive_intact() {
        let (a, mut b) = tokio::io::duplex(64 * 1024);
        let data: Vec<u8> = (0..3 * HIGH_WATER + 17).map(|i| (i * 31 % 251) as u8).collect();
        let expected = data.clone();
        let writer = tokio::spawn(async move {
            let mut w = Coalesce::new(a);
            for chunk in data.chunks(10_000) {
                w.write_all(chunk).await.expect("io");
            }
            w.shutdown().await.expect("io");
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("io");
        writer.await.expect("io");
        assert_eq!(got, expected);
    }
}
