//! Prometheus metrics: each service registers its metrics in a [`Registry`] and serves them as
//! text on `GET /metrics` of a separate HTTP listener.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
pub use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Serves `registry` on `GET /metrics` until `shutdown` resolves (plaintext, no access control).
pub async fn serve(
    registry: Arc<Registry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let security = crate::security::ServerSecurity::default();
    axum::serve(crate::tls::HttpListener::new(listener, None)?, router(registry, security))
        .with_graceful_shutdown(shutdown)
        .await
}

/// `GET /metrics`, behind the `metrics` grant when `--metrics-auth` is on.
fn router(registry: Arc<Registry>, security: crate::security::ServerSecurity) -> Router {
    let security = Arc::new(security);
    Router::new().route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let (registry, security) = (registry.clone(), security.clone());
            async move {
                match admit(&security, &headers) {
                    Ok(()) => render(&registry).into_response(),
                    Err((code, why)) => {
                        (code, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], why).into_response()
                    }
                }
            }
        }),
    )
}

fn admit(
    security: &crate::security::ServerSecurity,
    headers: &axum::http::HeaderMap,
) -> Result<(), (StatusCode, String)> {
    let Some(auth) = security.auth.as_ref().filter(|_| security.metrics_auth) else { return Ok(()) };
    let p = auth.authenticate(headers, None).map_err(|e| (StatusCode::UNAUTHORIZED, e.to_string()))?;
    if p.has_service(crate::auth::ServiceGrant::Metrics) {
        Ok(())
    } else {
        Err((StatusCode::FORBIDDEN, "missing grant: metrics".into()))
    }
}

fn render(registry: &Registry) -> impl IntoResponse + use<> {
    let mut body = String::new();
    match encode(&mut body, registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {e}"),
        ),
    }
}

/// Binds `addr` and serves `registry` there in the background until `stop` fires, with the
/// server's TLS and, with `--metrics-auth`, its access control; returns the bound address.
pub async fn spawn(
    addr: std::net::SocketAddr,
    registry: Registry,
    stop: &crate::shutdown::Stop,
    security: &crate::security::ServerSecurity,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, tls = security.tls.is_some(), "metrics on /metrics");
    let stopped = stop.wait();
    let listener = crate::tls::HttpListener::new(listener, security.tls.clone())?;
    let app = router(Arc::new(registry), security.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(local)
}

/// Renders `registry` as OpenMetrics text (also used by tests and the CLI).
pub fn encode_text(registry: &Registry) -> String {
    let mut body = String::new();
    // Encoding into a String cannot fail for the metric types ragd uses.
    let _ = encode(&mut body, registry);
    body
}

/// Labels of one RPC outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RpcCodeLabels {
    /// gRPC path, e.g. `/ragd.v1.Indexer/Search`.
    pub method: String,
    /// gRPC status code name (`Ok`, `NotFound`, ...).
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct RpcMethodLabels {
    pub method: String,
}

fn rpc_seconds() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 20),
    )
}

/// Requests per gRPC method and status code, and their latency, for every RPC a server
/// handles — recorded by [`RpcMetricsLayer`] around the whole tonic router. The code is the
/// `grpc-status` of the response headers (errors before the first message, and every unary
/// error), else OK; latency is to the response headers (for streams: to the first message).
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    requests: prometheus_client::metrics::family::Family<
        RpcCodeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    seconds: prometheus_client::metrics::family::Family<
        RpcMethodLabels,
        prometheus_client::metrics::histogram::Histogram,
        fn() -> prometheus_client::metrics::histogram::Histogram,
    >,
}

impl RpcMetrics {
    /// Registers `<prefix>_rpc_requests` and `<prefix>_rpc_seconds` in `registry`.
    pub fn new(registry: &mut Registry, prefix: &str) -> Self {
        let this = Self {
            requests: Default::default(),
            seconds: prometheus_client::metrics::family::Family::new_with_constructor(rpc_seconds),
        };
        let r = registry.sub_registry_with_prefix(prefix);
        r.register("rpc_requests", "gRPC requests by method and status code", this.requests.clone());
        r.register("rpc_seconds", "gRPC latency to the response headers by method", this.seconds.clone());
        this
    }

    fn record(&self, method: String, code: tonic::Code, elapsed: std::time::Duration) {
        self.seconds
            .get_or_create(&RpcMethodLabels { method: method.clone() })
            .observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&RpcCodeLabels { method, code: format!("{code:?}") }).inc();
    }
}

/// Tower layer recording [`RpcMetrics`] (none with `None`); on every server it also answers an
/// oversized unary request RESOURCE_EXHAUSTED ([`crate::status::rewrite_message_too_large`]).
#[derive(Debug, Clone, Default)]
pub struct RpcMetricsLayer(pub Option<RpcMetrics>);

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService { inner, metrics: self.0.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: Option<RpcMetrics>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = std::time::Instant::now();
        let method = request.uri().path().to_string();
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await;
            if let Ok(r) = &mut response {
                crate::status::rewrite_message_too_large(r.headers_mut());
            }
            if let (Some(m), Ok(r)) = (metrics, &response) {
                let code = r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from);
                m.record(method, code, started.elapsed());
            }
            response
        })
    }
}
