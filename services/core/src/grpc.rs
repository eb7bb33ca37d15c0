//! Server plumbing every service shares: gRPC reflection (v1 and v1alpha, so grpcurl works),
//! the accepted-socket settings, and a stop signal many tasks can wait on.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use crate::shutdown::{ServerTask, Stop, drain, go_live, run_until_shutdown};

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

/// A tonic-generated service a ragd server can host (what `Server::add_service` takes).
pub trait GrpcService:
    tonic::codegen::Service<
        tonic::codegen::http::Request<tonic::body::Body>,
        Response = tonic::codegen::http::Response<tonic::body::Body>,
        Error = std::convert::Infallible,
    > + tonic::server::NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `service` with grpc.health.v1 (`health`) and reflection over `descriptor_sets` on
/// `listener` (TCP_NODELAY; TLS and access control as `security` says) until `stop` fires; tonic
/// then drains in-flight requests. Every RPC is counted by method and final status code and
/// timed in `metrics`.
pub fn spawn_server<S>(
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    service: S,
    descriptor_sets: &[&'static [u8]],
    listener: TcpListener,
    stop: &Stop,
    metrics: crate::metrics::RpcMetrics,
    security: &crate::security::ServerSecurity,
) -> Result<ServerTask, tonic_reflection::server::Error>
where
    S: GrpcService,
    S::Future: Send + 'static,
{
    let (reflection_v1, reflection_v1alpha) = reflection(descriptor_sets)?;
    Ok(tokio::spawn(
        tonic::transport::Server::builder()
            // One span per RPC, child of the caller's W3C traceparent.
            .trace_fn(crate::telemetry::rpc_span)
            // Counts RPCs and maps oversized requests to RESOURCE_EXHAUSTED.
            .layer(crate::metrics::RpcMetricsLayer(metrics))
            .layer(security.layer())
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(crate::tls::incoming(listener, security.tls.clone()), stop.wait()),
    ))
}

/// What [`host`] started: the server, its readiness (NOT_SERVING until the service calls
/// `go_live`), the stop signal every task of the service waits on, and the bound address.
#[derive(Debug)]
pub struct Host {
    pub server: ServerTask,
    pub readiness: crate::health::Readiness,
    pub stop: Stop,
    pub local: std::net::SocketAddr,
}

/// The start every ragd service shares: health NOT_SERVING, the gRPC server (`service` with
/// health, reflection, TLS and access control, every RPC counted and timed as
/// `<metrics_prefix>_rpc_requests` / `_rpc_seconds` in `registry`) on `listener`, and the
/// Prometheus listener on `metrics_addr` over `registry`. Failures name the part that failed.
#[allow(clippy::too_many_arguments)]
pub async fn host<S>(
    health_service: &'static str,
    service: S,
    descriptor_sets: &[&'static [u8]],
    listener: TcpListener,
    security: &crate::security::ServerSecurity,
    metrics_prefix: &str,
    mut registry: crate::metrics::Registry,
    metrics_addr: Option<std::net::SocketAddr>,
) -> Result<Host, crate::startup::StartupError>
where
    S: GrpcService,
    S::Future: Send + 'static,
{
    use crate::startup::StartupError;
    let (readiness, health) = crate::health::Readiness::new(health_service).await;
    let local = listener.local_addr().map_err(StartupError::of("listener"))?;
    let stop = Stop::default();
    let rpc_metrics = crate::metrics::RpcMetrics::new(&mut registry, metrics_prefix);
    let server = spawn_server(health, service, descriptor_sets, listener, &stop, rpc_metrics, security)
        .map_err(StartupError::of("grpc reflection"))?;
    if let Some(addr) = metrics_addr
        && let Err(e) = crate::metrics::spawn(addr, registry, &stop, security).await
    {
        stop.trigger();
        return Err(StartupError::new(format!("metrics listener {addr}"), e));
    }
    Ok(Host { server, readiness, stop, local })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflection_accepts_descriptor_sets() {
        assert!(reflection(&[]).is_ok());
    }
}
