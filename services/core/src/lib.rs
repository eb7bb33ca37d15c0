//! ragd-core: the pieces every ragd service shares.
//!
//! - [`admission`]: latency-bounded admission (expected queue wait against a bound and the
//!   caller's deadline);
//! - [`client`]: gRPC channels with ragd defaults;
//! - [`clock`]: wall-clock stamps (snapshot names);
//! - [`config`]: clap/env config fragments (gRPC listener limits, logging) embedded by each
//!   service's own typed config;
//! - [`telemetry`]: one-time `tracing` initialisation;
//! - [`status`]: building rich gRPC statuses (field violations, retry hints) and reading the
//!   caller's deadline from `grpc-timeout`;
//! - [`discovery`]: etcd registration (lease + keep-alive) and watch-driven balanced channels;
//! - [`grpc`]: reflection, accepted-socket settings, a shared stop signal;
//! - [`health`]: `grpc.health.v1` reporter that follows readiness;
//! - [`metrics`]: a Prometheus registry served over HTTP;
//! - [`net`]: the TCP transport of servers and clients (write coalescing);
//! - [`upstream`]: the client transport over one or many (discovered) members, ejecting failed ones;
//! - [`shutdown`]: SIGINT/SIGTERM as a future, for `serve(config, listener, shutdown)`;
//! - [`tls`]: rustls servers (reloading certificates, mutual TLS) and clients;
//! - [`auth`], [`jwt`]: credentials, grants and the table of what every RPC needs;
//! - [`security`]: the flags of both and the layer that applies them to every call;
//! - [`pki`]: throwaway certificates (`ragd up --tls-generate`, tests);
//! - [`watch`]: values loaded from files and reloaded when the files change.

pub mod admission;
pub mod auth;
pub mod client;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod grpc;
pub mod health;
pub mod jwt;
pub mod metrics;
pub mod net;
pub mod pki;
pub mod security;
pub mod shutdown;
pub mod startup;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;
