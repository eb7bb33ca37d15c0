//! gRPC client channels with ragd's defaults (connect timeout, TCP_NODELAY, keep-alive).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Connects to `url` (e.g. `http://127.0.0.1:50051`), plaintext.
pub async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    connect_with(url, None).await
}

/// Connects to `url`, with TLS where `tls` applies to it (`https://`, or `--upstream-tls`).
pub async fn connect_with(
    url: &str,
    tls: Option<crate::tls::ClientTls>,
) -> Result<Channel, tonic::transport::Error> {
    let (endpoint, connector) = endpoint_for(url, tls)?;
    endpoint.connect_with_connector(connector).await
}

/// The endpoint and connector of `url`: tonic sees `http://` and the connector knows whether
/// the URL said `https://` (see [`crate::net::Connector`]).
pub fn endpoint_for(
    url: &str,
    tls: Option<crate::tls::ClientTls>,
) -> Result<(Endpoint, crate::net::Connector), tonic::transport::Error> {
    match url.strip_prefix("https://") {
        Some(rest) => Ok((endpoint(&format!("http://{rest}"))?, crate::net::Connector::new(tls, true))),
        None => Ok((endpoint(url)?, crate::net::Connector::new(tls, false))),
    }
}

/// A channel that connects on first use (see [`connect`]).
pub fn connect_lazy(url: &str) -> Result<Channel, tonic::transport::Error> {
    connect_lazy_with(url, None)
}

/// A channel that connects on first use (see [`connect_with`]).
pub fn connect_lazy_with(
    url: &str,
    tls: Option<crate::tls::ClientTls>,
) -> Result<Channel, tonic::transport::Error> {
    let (endpoint, connector) = endpoint_for(url, tls)?;
    Ok(endpoint.connect_with_connector_lazy(connector))
}

/// An endpoint with ragd's defaults, for callers that want to tune it further.
pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

/// True for failures worth another try of an idempotent call: UNAVAILABLE, and errors the
/// transport raised itself (a connection reset mid-call surfaces as UNKNOWN or CANCELLED with
/// the transport error as its source; a status the server sent has no source).
pub fn retryable(s: &tonic::Status) -> bool {
    match s.code() {
        tonic::Code::Unavailable => true,
        tonic::Code::Unknown | tonic::Code::Cancelled => std::error::Error::source(s).is_some(),
        _ => false,
    }
}

/// Runs an idempotent call again while it fails [`retryable`]-ly — a peer just died, is
/// restarting or draining, and a balanced channel may route the next try elsewhere: at most
/// `attempts` tries, backoff doubling from 20 ms, never sleeping past `deadline`. Other codes
/// return at once.
pub async fn retry_unavailable<T, F, Fut>(
    attempts: u32,
    deadline: Option<std::time::Instant>,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut delay = Duration::from_millis(20);
    let mut attempt = 1;
    loop {
        match call().await {
            Err(s)
                if retryable(&s)
                    && attempt < attempts
                    && deadline.is_none_or(|d| std::time::Instant::now() + delay < d) =>
            {
                tracing::debug!(attempt, error = %s, "peer unavailable; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_only_unavailable_and_only_so_often() {
        let calls = AtomicU32::new(0);
        let r: Result<(), _> = retry_unavailable(3, None, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::unavailable("down"))
        })
        .await;
        assert_eq!(r.expect_err("fails").code(), tonic::Code::Unavailable);
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        calls.store(0, Ordering::SeqCst);
        let r: Result<(), _> = retry_unavailable(3, None, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(tonic::Status::invalid_argument("bad"))
        })
        .await;
        assert_eq!(r.expect_err("fails").code(), tonic::Code::InvalidArgument);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A server-sent UNKNOWN is the server's answer, not a transport failure.
        assert!(!retryable(&tonic::Status::unknown("handler said so")));
        let transport = tonic::Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(transport.code(), tonic::Code::Unknown);
        assert!(retryable(&transport));

        calls.store(0, Ordering::SeqCst);
        let r = retry_unavailable(5, None, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(tonic::Status::unavailable("down"))
            } else {
                Ok(7)
            }
        })
        .await;
        assert_eq!(r.expect("third try"), 7);
    }
}
