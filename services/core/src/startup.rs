//! Start-up (and stop) failures of a service, kept apart from request errors: `serve()` returns a
//! [`StartupError`] naming what failed — the listener, the TLS material, the models, the store,
//! etcd registration — with its cause. Request error enums (and their gRPC statuses) never carry
//! these, so a message cannot claim that a metrics listener failed inside "onnx runtime".

/// What failed while a service started or ran its server, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {cause}")]
pub struct StartupError {
    what: String,
    cause: String,
}

impl StartupError {
    /// `what` names the part that failed ("metrics listener 0.0.0.0:9100", "loading models");
    /// `cause` is the underlying error.
    pub fn new(what: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        Self { what: what.into(), cause: cause.to_string() }
    }

    /// The part that failed.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// A closure for `map_err`: `.map_err(StartupError::of("store"))`.
    pub fn of<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Self + '_ {
        move |e| Self::new(what, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_part_then_the_cause() {
        let e = StartupError::new("metrics listener 127.0.0.1:9100", "address in use");
        assert_eq!(e.to_string(), "metrics listener 127.0.0.1:9100: address in use");
        assert_eq!(e.what(), "metrics listener 127.0.0.1:9100");
        let e: StartupError =
            Err::<(), _>("no such file").map_err(StartupError::of("tls")).expect_err("an error");
        assert_eq!(e.to_string(), "tls: no such file");
    }
}
