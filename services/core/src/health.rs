//! `grpc.health.v1` that follows readiness: every service starts NOT_SERVING, turns SERVING when
//! its models/shards are ready and goes back to NOT_SERVING first thing on shutdown, so load
//! balancers stop sending work before the server drains.

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// Health of one service, reported under its fully qualified name and under "" (the whole server).
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    service: &'static str,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("service", &self.service).finish()
    }
}

impl Readiness {
    /// Creates the health service with `service` (and "") NOT_SERVING.
    pub async fn new(service: &'static str) -> (Self, HealthServer<impl Health>) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let this = Self { reporter, service };
        this.set(ServingStatus::NotServing).await;
        (this, server)
    }

    /// Marks the service ready.
    pub async fn serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Marks the service not ready (loading or shutting down).
    pub async fn not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status(self.service, status).await;
        self.reporter.set_service_status("", status).await;
    }
}
