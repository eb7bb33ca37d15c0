//! Tracing and OpenTelemetry, initialised once per process by the binary (not by libraries or
//! tests).
//!
//! - Logs: `tracing` with the level from `RUST_LOG` (default `info`), text or JSON on stderr.
//! - Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every `tracing` span is also exported
//!   over OTLP/gRPC (batch exporter; the standard `OTEL_*` variables apply, e.g.
//!   `OTEL_BSP_SCHEDULE_DELAY`), with `service.name` = the service (`OTEL_SERVICE_NAME` wins).
//! - Propagation: W3C trace context. Servers open one span per RPC whose parent is the caller's
//!   `traceparent` ([`rpc_span`], installed by `grpc::spawn_server`); clients [`inject`] the
//!   current span's context into outgoing requests, so one `Ask` is one trace across the
//!   generator, the indexer and the embedder.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::LogConfig;

/// Flushes and shuts down the trace exporter when dropped (end of `main`).
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("ragd: flushing traces failed: {e}");
        }
    }
}

/// The `service.name` of the CLI's client verbs.
pub const CLI_SERVICE: &str = "ragd-cli";

/// Installs the global subscriber (logs, and OTLP traces if configured) for `service`
/// (`ragd-cli` for the CLI's client verbs, which log less: [`LogConfig::default_filter`]). A
/// second call is a no-op (useful when tests start several services).
pub fn init(config: &LogConfig, service: &str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.default_filter(service == CLI_SERVICE)));
    let fmt_layer = if config.log_json {
        fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let (otel_layer, provider) = match otlp_provider(service) {
        Ok(Some(p)) => {
            let tracer = p.tracer("ragd");
            (Some(tracing_opentelemetry::layer().with_tracer(tracer)), Some(p))
        }
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("ragd: OTLP exporter disabled: {e}");
            (None, None)
        }
    };
    let result = tracing_subscriber::registry().with(filter).with(fmt_layer).with(otel_layer).try_init();
    if result.is_err() {
        tracing::debug!("tracing subscriber already installed");
    }
    TelemetryGuard { provider }
}

fn otlp_provider(service: &str) -> Result<Option<SdkTracerProvider>, String> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    // The exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself; TLS as the OTel spec's
    // variables say.
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(tls) = otlp_tls()? {
        use opentelemetry_otlp::WithTonicConfig;
        builder = builder.with_tls_config(tls);
    }
    let exporter = builder.build().map_err(|e| e.to_string())?;
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Some(provider))
}

/// TLS to the collector from the OpenTelemetry specification's variables:
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` (the CA; it turns TLS on, with an `https://` endpoint),
/// `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and `OTEL_EXPORTER_OTLP_CLIENT_KEY` (mutual TLS); the
/// `_TRACES_` forms take precedence.
fn otlp_tls() -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
    let var = |name: &str| {
        std::env::var_os(format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
            .or_else(|| std::env::var_os(format!("OTEL_EXPORTER_OTLP_{name}")))
    };
    let read = |p: std::ffi::OsString| std::fs::read(&p).map_err(|e| format!("{}: {e}", p.to_string_lossy()));
    let Some(ca) = var("CERTIFICATE") else { return Ok(None) };
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
    if let (Some(cert), Some(key)) = (var("CLIENT_CERTIFICATE"), var("CLIENT_KEY")) {
        tls = tls.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(Some(tls))
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// The span of one incoming RPC (`rpc.method` = the gRPC path), child of the caller's
/// `traceparent` when it sent one.
pub fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc.server", otel.name = %request.uri().path(), rpc.method = %request.uri().path());
    if !span.is_disabled() {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        let _ = span.set_parent(parent);
    }
    span
}

/// Writes the current span's trace context (`traceparent`) into an outgoing request.
pub fn inject<T>(request: &mut tonic::Request<T>) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(request.metadata_mut()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_flows_from_client_metadata_to_server_span_parent() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        let mut request = tonic::Request::new(());
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(request.metadata_mut()));
        let header = request.metadata().get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(header.as_deref(), Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let headers = request.into_parts().0.into_headers();
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(&headers));
        assert_eq!(parent.span().span_context().trace_id(), sc.trace_id());
    }
}
