//! Config fragments shared by the services. Each service flattens them into its own clap config;
//! every field has a `RAGD_*` environment variable.

use clap::Args;

/// Default gRPC max message size (both directions): 64 MiB, enough for a batch of several thousand
/// 768-d vectors. Set explicitly on servers and clients; tonic's 4 MiB default is too small.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// gRPC server settings common to every service.
#[derive(Debug, Clone, Args)]
pub struct GrpcConfig {
    /// Max encoded gRPC message size accepted and sent, in bytes.
    #[arg(long, env = "RAGD_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// How long a graceful shutdown waits for in-flight requests before closing connections.
    #[arg(long, env = "RAGD_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        clap_defaults()
    }
}

/// The value of a clap config with no flags and no environment: its `#[arg(default_value…)]`
/// attributes are the one place each default is written, and `Default` impls call this instead
/// of repeating them. Panics only if `T` has a required argument (a config bug the config tests
/// catch), never on user input.
pub fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        // Defaults, not this process's RAGD_* variables.
        .mut_args(|a| a.env(None::<&'static str>));
    let parsed =
        command.try_get_matches_from(std::iter::empty::<String>()).and_then(|m| T::from_arg_matches(&m));
    match parsed {
        Ok(t) => t,
        Err(e) => panic!("config defaults do not parse (a required argument?): {e}"),
    }
}

/// Logging settings.
#[derive(Debug, Clone, Default, Args)]
pub struct LogConfig {
    /// Log as JSON lines instead of human-readable text. Filter with RUST_LOG.
    #[arg(long, env = "RAGD_LOG_JSON", global = true)]
    pub log_json: bool,
    /// More log lines when RUST_LOG is not set: services log at info (-v: debug); client verbs
    /// show only warnings of ragd itself (-v: info and libraries' warnings, such as a PDF
    /// parser's glyph warnings; -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

impl LogConfig {
    /// The log filter used when RUST_LOG is not set: a service is talkative (`info`), a client
    /// verb of the CLI is quiet — its output is its answer — and libraries' warnings (pdf_extract
    /// warns about every unknown glyph) only show with `-v`.
    pub fn default_filter(&self, client: bool) -> &'static str {
        match (client, self.verbose) {
            (false, 0) => "info",
            (false, _) => "debug",
            (true, 0) => "warn,pdf_extract=error",
            (true, 1) => "info",
            (true, _) => "debug",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_the_clap_attributes_without_the_environment() {
        let g = GrpcConfig::default();
        assert_eq!((g.max_message_bytes, g.shutdown_grace_secs), (DEFAULT_MAX_MESSAGE_BYTES, 10));
        let l: LogConfig = clap_defaults();
        assert_eq!((l.log_json, l.verbose), (false, 0));
    }

    #[test]
    fn client_verbs_are_quiet_by_default_and_verbose_on_request() {
        let log = |verbose| LogConfig { log_json: false, verbose };
        assert_eq!(log(0).default_filter(false), "info");
        assert_eq!(log(1).default_filter(false), "debug");
        let quiet = log(0).default_filter(true);
        assert!(quiet.starts_with("warn") && quiet.contains("pdf_extract=error"), "{quiet}");
        assert_eq!(log(1).default_filter(true), "info");
        assert_eq!(log(2).default_filter(true), "debug");
    }
}
