//! Rich gRPC statuses and caller deadlines.
//!
//! Services map their error enums to `tonic::Status` exhaustively; these helpers give those
//! statuses the standard `google.rpc` details (BadRequest field violations, RetryInfo) so clients in
//! any language can act on them, plus a plain `retry-after-ms` metadata entry.

use std::time::{Duration, Instant};

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Longest error message (and field-violation description) a ragd status carries, in bytes. The
/// message travels in the `grpc-message` header and the details in `grpc-status-details-bin`;
/// grpc-core clients refuse metadata above 16 KB ("Stream removed"), so a message echoing a huge
/// input would hide the reason from the caller.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// Longest prefix of a user's value [`quote`] shows, in characters.
pub const QUOTE_CHARS: usize = 64;

/// `message` cut to at most [`MAX_MESSAGE_BYTES`] (at a character boundary), saying how long it was.
pub fn bound(message: impl Into<String>) -> String {
    let mut message = message.into();
    if message.len() > MAX_MESSAGE_BYTES {
        let total = message.len();
        let mut cut = MAX_MESSAGE_BYTES - 40;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(&format!("… ({total} bytes in all)"));
    }
    message
}

/// A user's value for an error message: quoted like `{:?}`, at most [`QUOTE_CHARS`] characters
/// of it, with its length when it was cut (`"aaaa…" (10000 bytes)`).
pub fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTE_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// INVALID_ARGUMENT naming the offending request field (the description [`bound`]ed).
pub fn invalid_argument(field: &str, description: impl Into<String>) -> Status {
    let description = bound(description);
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
        bound(message),
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
        bound(format!("{context}: {}", status.message())),
        status.details().to_vec().into(),
        status.metadata().clone(),
    )
}

/// The retry hint of a RESOURCE_EXHAUSTED status built by [`resource_exhausted`].
pub fn retry_after(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|r| r.retry_delay)
}

/// Is `status` tonic's refusal of a message above the configured size limit? tonic answers
/// OUT_OF_RANGE ("decoded message length too large"); the gRPC status-code spec says
/// RESOURCE_EXHAUSTED for a message larger than the configured limit.
pub fn is_message_too_large(code: Code, message: &str) -> bool {
    code == Code::OutOfRange && message.contains("message length too large")
}

/// An error from a request stream (a client-streaming RPC's messages) with tonic's oversized
/// message refusal as RESOURCE_EXHAUSTED; every other status is kept.
pub fn inbound(status: Status) -> Status {
    if is_message_too_large(status.code(), status.message()) {
        Status::resource_exhausted(bound(status.message()))
    } else {
        status
    }
}

/// A unary request's message above the server's limit is refused by tonic before any handler
/// runs, as a trailers-only response with OUT_OF_RANGE in its headers: this rewrites that
/// `grpc-status` to RESOURCE_EXHAUSTED (the message is kept). Called on every response by the
/// server's RPC layer (`metrics::RpcMetricsService`), before it counts the code.
pub fn rewrite_message_too_large(headers: &mut http::HeaderMap) {
    let too_large = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers.get("grpc-message").and_then(|m| m.to_str().ok()).is_some_and(|m| {
            // grpc-message is percent-encoded (spaces as %20).
            is_message_too_large(Code::OutOfRange, &m.replace("%20", " "))
        });
    if too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
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
    fn messages_and_quoted_values_are_bounded() {
        let huge = "x".repeat(10_000);
        let s = invalid_argument("name", format!("{huge:?} is not a name"));
        assert!(s.message().len() <= MAX_MESSAGE_BYTES + 20, "{} bytes", s.message().len());
        assert!(s.message().ends_with("(10016 bytes in all)"), "{}", &s.message()[s.message().len() - 40..]);
        // The details (a google.rpc.Status: the message again and the field violation) stay a
        // few KB, far below the 16 KB metadata limit even base64-encoded.
        assert!(s.details().len() < 3 * MAX_MESSAGE_BYTES, "details {} bytes", s.details().len());
        // Multi-byte characters are never split.
        let wide = bound("é".repeat(2000));
        assert!(wide.len() <= MAX_MESSAGE_BYTES && wide.contains("(4000 bytes in all)"));
        assert_eq!(quote("docs"), "\"docs\"");
        let q = quote(&huge);
        assert_eq!(q, format!("{:?}… (10000 bytes)", "x".repeat(QUOTE_CHARS)));
        assert_eq!(bound("short"), "short");
    }

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
