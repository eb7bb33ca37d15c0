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

/// Serves `registry` on `GET /metrics` until `shutdown` resolves.
pub async fn serve(
    registry: Arc<Registry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { render(&registry) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
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

/// Renders `registry` as OpenMetrics text (also used by tests and the CLI).
pub fn encode_text(registry: &Registry) -> String {
    let mut body = String::new();
    // Encoding into a String cannot fail for the metric types ragd uses.
    let _ = encode(&mut body, registry);
    body
}
