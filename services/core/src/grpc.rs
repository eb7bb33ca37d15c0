//! Server plumbing every service shares: gRPC reflection (v1 and v1alpha, so grpcurl works),
//! the accepted-socket settings, and a stop signal many tasks can wait on.

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

/// Reflection services (v1, v1alpha) over the given encoded file descriptor sets; the
/// grpc.health.v1 descriptors are always included.
#[allow(clippy::type_complexity)]
pub fn reflection(
    descriptor_sets: &[&'static [u8]],
) -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        descriptor_sets.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, set| b.register_encoded_file_descriptor_set(set),
        )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

/// Accepted connections of `listener` with TCP_NODELAY (tonic's `Server::tcp_nodelay` only
/// applies to listeners it binds itself, and without it Nagle + delayed ACKs add ~40 ms), their
/// writes coalesced by [`crate::net::Coalesce`].
pub fn incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<crate::net::Coalesce<tokio::net::TcpStream>>> {
    use futures::StreamExt;
    TcpIncoming::from(listener).with_nodelay(Some(true)).map(|s| s.map(crate::net::Coalesce::new))
}

/// Serves `service` with grpc.health.v1 (`health`) and reflection over `descriptor_sets` on
/// `listener` (TCP_NODELAY; TLS and access control as `security` says) until `stop` fires; tonic
/// then drains in-flight requests. With `metrics`, every RPC is counted by method and status
/// code and timed.
#[allow(clippy::too_many_arguments)]
pub fn spawn_server<S>(
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    service: S,
    descriptor_sets: &[&'static [u8]],
    listener: TcpListener,
    stop: &Stop,
    metrics: Option<crate::metrics::RpcMetrics>,
    security: &crate::security::ServerSecurity,
) -> Result<ServerTask, tonic_reflection::server::Error>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let (reflection_v1, reflection_v1alpha) = reflection(descriptor_sets)?;
    Ok(tokio::spawn(
        tonic::transport::Server::builder()
            // One span per RPC, child of the caller's W3C traceparent.
            .trace_fn(crate::telemetry::rpc_span)
            .layer(crate::metrics::RpcMetricsLayer(metrics))
            .layer(security.layer())
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(crate::tls::incoming(listener, security.tls.clone()), stop.wait()),
    ))
}

/// A served gRPC server, as [`spawn_server`] returns it.
pub type ServerTask = tokio::task::JoinHandle<Result<(), tonic::transport::Error>>;

/// Waits up to `grace` for a stopped server to finish its in-flight requests, then aborts it.
/// Returns the server's own error if it failed while draining.
pub async fn drain(server: &mut ServerTask, grace: std::time::Duration) -> Result<(), String> {
    match tokio::time::timeout(grace, &mut *server).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(format!("grpc server: {e}")),
        Ok(Err(e)) => Err(format!("grpc server task: {e}")),
        Err(_) => {
            tracing::warn!(?grace, "in-flight requests outlived the shutdown grace period");
            server.abort();
            Ok(())
        }
    }
}

/// The start of a service's life once it can answer, the same for every ragd service: go
/// SERVING, then register `service` (with `meta`) in etcd when discovery is enabled. A failed
/// registration stops the server and is returned.
pub async fn go_live(
    readiness: &crate::health::Readiness,
    stop: &Stop,
    discovery: &crate::discovery::DiscoveryConfig,
    service: &str,
    scheme: &str,
    local: std::net::SocketAddr,
    meta: serde_json::Value,
) -> Result<Option<crate::discovery::Registration>, String> {
    readiness.serving().await;
    tracing::info!(addr = %local, "{service} ready");
    crate::discovery::register_if_enabled(discovery, service, scheme, local, meta).await.map_err(|e| {
        stop.trigger();
        format!("registration: {e}")
    })
}

/// The end of a service's life, the same for every ragd service: wait for `shutdown` (or the
/// server stopping on its own), go NOT_SERVING so balancers stop sending work, stop the server
/// and let it drain in-flight requests for up to `grace`, and only then leave discovery. Returns
/// why the server stopped on its own, if it did.
pub async fn run_until_shutdown(
    mut server: ServerTask,
    shutdown: impl std::future::Future<Output = ()>,
    readiness: &crate::health::Readiness,
    stop: &Stop,
    grace: std::time::Duration,
    registration: Option<crate::discovery::Registration>,
) -> Option<String> {
    tokio::pin!(shutdown);
    let early = tokio::select! {
        () = &mut shutdown => None,
        r = &mut server => Some(match r {
            Ok(Ok(())) => "grpc server stopped unexpectedly".to_string(),
            Ok(Err(e)) => format!("grpc server: {e}"),
            Err(e) => format!("grpc server task: {e}"),
        }),
    };
    readiness.not_serving().await;
    stop.trigger();
    if early.is_none() {
        match drain(&mut server, grace).await {
            Ok(()) => tracing::info!("drained"),
            Err(e) => tracing::error!(error = %e, "server error while draining"),
        }
    }
    // Drained: only now leave discovery (clients saw NOT_SERVING first).
    if let Some(r) = registration {
        r.deregister().await;
    }
    early
}

/// A one-way stop signal: [`Stop::trigger`] once, any number of [`Stop::wait`]ers.
#[derive(Debug, Clone)]
pub struct Stop {
    tx: watch::Sender<bool>,
    rx: watch::Receiver<bool>,
}

impl Default for Stop {
    fn default() -> Self {
        let (tx, rx) = watch::channel(false);
        Self { tx, rx }
    }
}

impl Stop {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    /// Resolves once triggered.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_wakes_every_waiter_even_late_ones() {
        let stop = Stop::default();
        let early = tokio::spawn(stop.wait());
        stop.trigger();
        early.await.expect("early waiter");
        stop.wait().await;
    }

    #[test]
    fn reflection_accepts_descriptor_sets() {
        assert!(reflection(&[]).is_ok());
    }
}
