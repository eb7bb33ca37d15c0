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
/// handles — recorded by [`RpcMetricsLayer`] around the whole tonic router of every ragd service
/// (one schema: `ragd_<service>_rpc_requests{method,code}`, `ragd_<service>_rpc_seconds{method}`).
/// The code is the final `grpc-status`: from the response headers when the server answered
/// trailers-only (every unary error), else from the trailers at the end of the body, so a stream
/// that fails after its first message counts as its error; a body dropped before its trailers
/// (the client went away) counts as `Cancelled`. Latency is to the end of the response.
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
        r.register("rpc_requests", "gRPC requests by method and final status code", this.requests.clone());
        r.register("rpc_seconds", "gRPC latency to the end of the response by method", this.seconds.clone());
        this
    }

    fn record(&self, method: String, code: tonic::Code, elapsed: std::time::Duration) {
        self.seconds
            .get_or_create(&RpcMethodLabels { method: method.clone() })
            .observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&RpcCodeLabels { method, code: format!("{code:?}") }).inc();
    }
}

/// The `grpc-status` in `headers` (response headers or trailers), if any.
fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let v = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(tonic::Code::from(v))
}

/// One RPC not yet counted: counted exactly once, by [`Pending::finish`] or, when the response
/// body is dropped before its end, as `Cancelled`.
#[derive(Debug, Default)]
struct Pending(Option<(RpcMetrics, String, std::time::Instant)>);

impl Pending {
    fn finish(&mut self, code: tonic::Code) {
        if let Some((metrics, method, started)) = self.0.take() {
            metrics.record(method, code, started.elapsed());
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its RPC when its trailers (or its end) go by.
    #[derive(Debug)]
    pub struct RpcBody<B> {
        #[pin]
        inner: B,
        pending: Pending,
    }
}

impl<B: http_body::Body> http_body::Body for RpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.pending.finish(grpc_status(trailers).unwrap_or(tonic::Code::Unknown));
                }
            }
            // tonic ends every gRPC body with trailers; an end without them, or a broken body,
            // is not a status the server chose.
            std::task::Poll::Ready(None) | std::task::Poll::Ready(Some(Err(_))) => {
                this.pending.finish(tonic::Code::Unknown)
            }
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Tower layer recording [`RpcMetrics`]; it also answers an oversized unary request
/// RESOURCE_EXHAUSTED ([`crate::status::rewrite_message_too_large`]).
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer(pub RpcMetrics);

impl<S> tower_layer::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService { inner, metrics: self.0.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for RpcMetricsService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<RpcBody<R>>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut pending = Pending(Some((
            self.metrics.clone(),
            request.uri().path().to_string(),
            std::time::Instant::now(),
        )));
        let future = self.inner.call(request);
        Box::pin(async move {
            let mut response = future.await?;
            crate::status::rewrite_message_too_large(response.headers_mut());
            // Trailers-only: the status is already in the headers and the body is empty.
            if let Some(code) = grpc_status(response.headers()) {
                pending.finish(code);
            }
            Ok(response.map(|inner| RpcBody { inner, pending }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn count(registry: &Registry, method: &str, code: &str) -> u64 {
        let text = encode_text(registry);
        let want = format!("rpc_requests_total{{method=\"{method}\",code=\"{code}\"}} ");
        text.lines()
            .find_map(|l| l.split_once(&want).map(|(_, n)| n.trim().parse().expect("a count")))
            .unwrap_or(0)
    }

    /// A response body of `method` whose trailers carry `status`, counted in the registry.
    fn counted_body(
        method: &str,
        status: &str,
    ) -> (Registry, RpcBody<http_body_util::StreamBody<futures::stream::Iter<Frames>>>) {
        let (registry, m) = metrics();
        let pending = Pending(Some((m, method.to_string(), std::time::Instant::now())));
        (registry, RpcBody { inner: body(Some(status)), pending })
    }

    fn metrics() -> (Registry, RpcMetrics) {
        let mut registry = Registry::default();
        let m = RpcMetrics::new(&mut registry, "t");
        (registry, m)
    }

    type Frames = std::vec::IntoIter<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>>;

    /// A response body: one data frame, then trailers with `trailer_status` when given.
    fn body(trailer_status: Option<&str>) -> http_body_util::StreamBody<futures::stream::Iter<Frames>> {
        let mut frames = vec![Ok(http_body::Frame::data(bytes::Bytes::from_static(b"x")))];
        if let Some(s) = trailer_status {
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", s.parse().expect("header value"));
            frames.push(Ok(http_body::Frame::trailers(t)));
        }
        http_body_util::StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_stream_counts_by_its_trailers_once() {
        let (registry, mut b) = counted_body("/s/A", "14");
        while let Some(f) = b.frame().await {
            f.expect("frame");
        }
        drop(b);
        assert_eq!(count(&registry, "/s/A", "Unavailable"), 1);
        assert_eq!(count(&registry, "/s/A", "Cancelled"), 0);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_trailers_counts_cancelled() {
        let (registry, mut b) = counted_body("/s/A", "0");
        b.frame().await.expect("a frame").expect("data");
        drop(b);
        assert_eq!(count(&registry, "/s/A", "Cancelled"), 1);
        assert_eq!(count(&registry, "/s/A", "Ok"), 0);
    }

    #[tokio::test]
    async fn trailers_only_counts_from_the_headers() {
        let (registry, m) = metrics();
        let svc = tower_service_fn(|_req: http::Request<()>| async {
            let mut r = http::Response::new(body(None));
            r.headers_mut().insert("grpc-status", "5".parse().expect("header value"));
            Ok::<_, std::convert::Infallible>(r)
        });
        let mut svc = tower_layer::Layer::layer(&RpcMetricsLayer(m), svc);
        let req = http::Request::builder().uri("/s/B").body(()).expect("request");
        let mut response = tower_service::Service::call(&mut svc, req).await.expect("response");
        assert_eq!(count(&registry, "/s/B", "NotFound"), 1, "counted at the headers");
        while let Some(f) = response.body_mut().frame().await {
            f.expect("frame");
        }
        drop(response);
        assert_eq!(count(&registry, "/s/B", "NotFound"), 1, "and only once");
        assert_eq!(count(&registry, "/s/B", "Unknown") + count(&registry, "/s/B", "Cancelled"), 0);
    }

    /// A `tower_service::Service` from a closure (tower's `service_fn` without the dependency).
    fn tower_service_fn<F>(f: F) -> FnService<F> {
        FnService(f)
    }

    #[derive(Clone)]
    struct FnService<F>(F);

    impl<F, Fut, Req, Res, E> tower_service::Service<Req> for FnService<F>
    where
        F: FnMut(Req) -> Fut,
        Fut: std::future::Future<Output = Result<Res, E>> + Send + 'static,
    {
        type Response = Res;
        type Error = E;
        type Future = Fut;

        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), E>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Req) -> Fut {
            (self.0)(req)
        }
    }
}
