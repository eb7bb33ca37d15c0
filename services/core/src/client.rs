//! gRPC client channels with ragd's defaults (connect timeout, TCP_NODELAY, keep-alive).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Connects to `url` (e.g. `http://127.0.0.1:50051`).
pub async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    endpoint(url)?.connect().await
}

/// An endpoint with ragd's defaults, for callers that want to tune it further.
pub fn endpoint(url: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}
