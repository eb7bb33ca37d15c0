//! Rich gRPC statuses and caller deadlines.
//!
//! Services map their error enums to `tonic::Status` exhaustively; these helpers give those
//! statuses the standard `google.rpc` details (BadRequest field violations, RetryInfo) so clients in
//! any language can act on them, plus a plain `retry-after-ms` metadata entry.

use std::time::{Duration, Instant};

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT naming the offending request field.
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// RESOURCE_EXHAUSTED (overload) with a RetryInfo detail and `retry-after-ms` metadata.
pub fn resource_exhausted(message: impl Into<String>, retry_after: Duration) -> Status {
    let mut status = Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    );
    if let Ok(v) = MetadataValue::try_from(retry_after.as_millis().to_string()) {
        status.metadata_mut().insert("retry-after-ms", v);
    }
    status
}

/// `status` with `context: ` before its message, keeping its code, details and metadata (so a
/// retry hint or field violation survives being passed on).
pub fn with_context(context: &str, status: &Status) -> Status {
    Status::with_details_and_metadata(
        status.code(),
        format!("{context}: {}", status.message()),
        status.details().to_vec().into(),
        status.metadata().clone(),
    )
}

/// The retry hint of a RESOURCE_EXHAUSTED status built by [`resource_exhausted`].
pub fn retry_after(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// The caller's timeout from the `grpc-timeout` request header, if it sent one.
///
/// Format (gRPC over HTTP/2): at most 8 ASCII digits followed by a unit, one of
/// `H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds.
pub fn request_timeout(metadata: &MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// tonic (server and client alike) cancels a call when its `grpc-timeout` expires and reports
/// CANCELLED "Timeout expired"; ragd services answer DEADLINE_EXCEEDED themselves this much
/// earlier — 5 % of the caller's timeout, between 5 ms and 100 ms — so callers see the right status.
pub fn deadline_margin(timeout: Duration) -> Duration {
    (timeout / 20).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

/// The caller's deadline from `grpc-timeout`, less [`deadline_margin`].
pub fn request_deadline(metadata: &MetadataMap) -> Option<Instant> {
    request_timeout(metadata).map(|t| Instant::now() + t.saturating_sub(deadline_margin(t)))
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_grpc_timeout_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn rejects_malformed_grpc_timeouts() {
        for bad in ["", "S", "10", "1x", "-1S", "123456789S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_timeout_from_metadata() {
        let mut md = MetadataMap::new();
        assert_eq!(request_timeout(&md), None);
        md.insert("grpc-timeout", MetadataValue::from_static("1500m"));
        assert_eq!(request_timeout(&md), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn deadline_margin_is_bounded() {
        assert_eq!(deadline_margin(Duration::from_millis(10)), Duration::from_millis(5));
        assert_eq!(deadline_margin(Duration::from_secs(1)), Duration::from_millis(50));
        assert_eq!(deadline_margin(Duration::from_secs(60)), Duration::from_millis(100));
    }

    #[test]
    fn overload_status_carries_retry_hint() {
        let s = resource_exhausted("queue full", Duration::from_millis(40));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&s), Some(Duration::from_millis(40)));
        assert_eq!(s.metadata().get("retry-after-ms").and_then(|v| v.to_str().ok()), Some("40"));
    }

    #[test]
    fn context_keeps_code_details_and_metadata() {
        let s = with_context("embedder", &resource_exhausted("queue full", Duration::from_millis(40)));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "embedder: queue full");
        assert_eq!(retry_after(&s), Some(Duration::from_millis(40)));
        assert!(s.metadata().get("retry-after-ms").is_some());
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let s = invalid_argument("texts", "must not be empty");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("texts"));
        let details = s.get_details_bad_request().expect("bad request details");
        assert_eq!(details.field_violations[0].field, "texts");
    }
}
