//! Client verbs: talk to a running ragd service over gRPC and print the answer.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_core::upstream::Upstream;
use ragd_proto::v1::{self, embedder_client::EmbedderClient};
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, Clone, Args)]
pub struct EndpointArgs {
    /// gRPC endpoint of the service.
    #[arg(long, env = "RAGD_ENDPOINT", default_value = "http://127.0.0.1:50051", global = true)]
    pub endpoint: String,
    #[command(flatten)]
    pub caller: CallerArgs,
}

pub use ragd_core::security::CallerArgs;

/// A transport to `url`, or — when `url` is `etcd` — balanced over the instances of `service`
/// registered in etcd (an error if there is none); with the caller's TLS and credential.
pub async fn channel(
    url: &str,
    discovery: &ragd_core::discovery::EtcdConfig,
    service: &str,
    caller: &CallerArgs,
) -> anyhow::Result<Upstream> {
    let security = caller.security()?;
    if url != ragd_core::discovery::DISCOVER {
        let channel = ragd_core::client::connect_with(url, security.tls.clone())
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        return Ok(Upstream::fixed_with(channel, security));
    }
    let found = ragd_core::discovery::instances(discovery, service).await?;
    if found.is_empty() {
        bail!("no {service} registered in etcd under {}", discovery.service_prefix(service));
    }
    let channels = found
        .iter()
        .map(|i| Ok((i.addr.clone(), ragd_core::client::connect_lazy_with(&i.addr, security.tls.clone())?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Upstream::many(channels, security))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Query,
    Passage,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Model name (default: the embedder's default model).
    #[arg(long, default_value = "")]
    model: String,
    /// Return raw (unnormalised) vectors.
    #[arg(long)]
    no_normalize: bool,
    /// Apply the model's query or passage prefix.
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// Print the cosine similarity matrix of the texts instead of the vectors.
    #[arg(long)]
    similarity: bool,
    /// Deadline of the call in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Texts to embed.
    #[arg(required = true)]
    texts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    endpoint: EndpointArgs,
    /// Service name to check ("" = the whole server).
    #[arg(long, default_value = "")]
    service: String,
    /// Keep retrying until SERVING or this many seconds have passed.
    #[arg(long, default_value_t = 0)]
    wait_secs: u64,
}

pub(crate) async fn embedder(endpoint: &EndpointArgs) -> anyhow::Result<EmbedderClient<Upstream>> {
    let channel = channel(&endpoint.endpoint, &Default::default(), "embedder", &endpoint.caller).await?;
    Ok(EmbedderClient::new(channel)
        .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES))
}

pub async fn embed(args: EmbedArgs) -> anyhow::Result<()> {
    let mut client = embedder(&args.endpoint).await?;
    let kind = match args.kind {
        None => v1::InputKind::Unspecified,
        Some(Kind::Query) => v1::InputKind::Query,
        Some(Kind::Passage) => v1::InputKind::Passage,
    };
    let mut request = tonic::Request::new(v1::EmbedRequest {
        texts: args.texts.clone(),
        model: args.model,
        normalize: args.no_normalize.then_some(false),
        kind: kind as i32,
    });
    request.set_timeout(Duration::from_millis(args.timeout_ms));
    let r = client
        .embed(request)
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    if args.similarity {
        println!("model {} ({}-d)", r.model, r.dim);
        for (i, a) in r.embeddings.iter().enumerate() {
            let row: Vec<String> =
                r.embeddings.iter().map(|b| format!("{:6.3}", cosine(&a.values, &b.values))).collect();
            println!("{} | {:.60}", row.join(" "), args.texts[i]);
        }
        return Ok(());
    }
    let out = json!({
        "model": r.model,
        "dim": r.dim,
        "stats": r.stats.map(|s| json!({
            "queue_micros": s.queue_micros, "inference_micros": s.inference_micros,
            "batches": s.batches, "max_batch_texts": s.max_batch_texts, "tokens": s.tokens,
        })),
        "embeddings": r.embeddings.iter().map(|e| json!({
            "tokens": e.tokens, "truncated": e.truncated, "values": e.values,
        })).collect::<Vec<_>>(),
    });
    println!("{out}");
    Ok(())
}

pub(crate) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

pub async fn models(args: EndpointArgs) -> anyhow::Result<()> {
    let mut client = embedder(&args).await?;
    let r = client
        .list_models(v1::ListModelsRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    for m in r.models {
        println!(
            "{}{}  dim={} max_seq_len={} pooling={} normalize={} precision={} device={}",
            m.name,
            if m.is_default { " (default)" } else { "" },
            m.dim,
            m.max_seq_len,
            m.pooling,
            m.normalize,
            m.precision,
            m.device
        );
    }
    Ok(())
}

pub async fn health(args: HealthArgs) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let status = async {
            let channel =
                channel(&args.endpoint.endpoint, &Default::default(), "", &args.endpoint.caller).await?;
            let r = HealthClient::new(channel)
                .check(HealthCheckRequest { service: args.service.clone() })
                .await?
                .into_inner();
            anyhow::Ok(r.status)
        }
        .await;
        match status {
            Ok(s) if s == ServingStatus::Serving as i32 => {
                println!("SERVING");
                return Ok(());
            }
            Ok(s) if tokio::time::Instant::now() >= deadline => bail!("not serving (status {s})"),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
