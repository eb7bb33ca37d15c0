//! A service's lifecycle, the same for every ragd service: the process's shutdown signals as a
//! future (`serve(config, listener, ragd_core::shutdown::signal())`), the [`Stop`] signal its
//! tasks share, going live ([`go_live`]: SERVING, then registration) and the end of its life
//! ([`run_until_shutdown`]: NOT_SERVING, [`drain`], deregistration).

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A served gRPC server, as `grpc::spawn_server` returns it.
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

/// A one-way stop signal for every task of a service (server, metrics listener, optimizer,
/// registration): [`Stop::trigger`] once, any number of [`Stop::wait`]ers, late ones included.
/// A `tokio_util` [`CancellationToken`](tokio_util::sync::CancellationToken) underneath.
#[derive(Debug, Clone, Default)]
pub struct Stop(tokio_util::sync::CancellationToken);

impl Stop {
    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves once triggered.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.0.clone().cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_wakes_every_waiter_even_late_ones() {
        let stop = Stop::default();
        let early = tokio::spawn(stop.wait());
        assert!(!stop.is_triggered());
        stop.trigger();
        early.await.expect("early waiter");
        stop.wait().await;
        assert!(stop.clone().is_triggered(), "clones share the signal");
    }
}
