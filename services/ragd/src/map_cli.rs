//! `ragd map`: pictures of an embedding space. The vectors are a collection's stored chunks
//! (paged through the indexer's Scroll, optionally filtered) or a file of texts embedded by the
//! embedder; out come a cosine-similarity heatmap (`heatmap.svg`, `heatmap.png`), a 2-D PCA
//! projection as a self-contained HTML page with labels on hover and colours by a metadata key
//! (`map.html`; with `--tsne` also a t-SNE map, `map-tsne.html`), and the coordinates
//! (`map.json`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ragd_core::config::DEFAULT_MAX_MESSAGE_BYTES;
use ragd_eval::map::{
    MapPoint, PageInfo, TSNE_EXACT_MAX, cosine_matrix, html_page, pca2, tsne_perplexity, tsne2,
};
use ragd_proto::v1;
use ragd_proto::v1::embedder_client::EmbedderClient;
use serde_json::{Map, Value, json};

use crate::indexer_cli::{IndexerEndpoint, client, status};

#[derive(Debug, Args)]
pub struct MapArgs {
    #[command(flatten)]
    endpoint: IndexerEndpoint,
    /// gRPC endpoint of the embedder (for --texts), or `etcd`.
    #[arg(long, env = "RAGD_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    embedder: String,
    /// Map this collection's chunks, by their stored vectors.
    #[arg(long, conflicts_with = "texts", required_unless_present = "texts")]
    collection: Option<String>,
    /// Only chunks whose metadata KEY equals VALUE (repeatable; all must hold). A VALUE of
    /// digits matches an integer, true/false a boolean, anything else a keyword.
    #[arg(long = "where", value_name = "KEY=VALUE", requires = "collection")]
    conditions: Vec<String>,
    /// At most this many chunks of the collection (the first ones a scroll returns).
    #[arg(long, default_value_t = 500)]
    limit: usize,
    /// A file of texts to embed and map: one text per line, or JSON lines with "text" (other
    /// string, number or boolean fields are metadata, for --colour-by).
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Embedding model for --texts (default: the embedder's default).
    #[arg(long, default_value = "")]
    model: String,
    /// Colour the points by this metadata key (`doc_id` colours a collection by document).
    #[arg(long, alias = "color-by")]
    colour_by: Option<String>,
    /// Also draw a t-SNE map (`map-tsne.html`; exact up to 1000 points, Barnes-Hut above;
    /// perplexity 30 or less for few points), started from the PCA map.
    #[arg(long)]
    tsne: bool,
    /// The heatmap shows at most this many vectors (the first ones; the map shows all).
    #[arg(long, default_value_t = 60)]
    heatmap_limit: usize,
    /// Directory for heatmap.svg, heatmap.png, map.html and map.json.
    #[arg(long)]
    out: PathBuf,
    /// Title of the page and the heatmap (default: the collection or file name).
    #[arg(long)]
    title: Option<String>,
}

/// A vector to place, with what is shown for it.
struct Item {
    /// Hover text (the chunk's or line's text, with its id).
    label: String,
    /// Heatmap row name.
    short: String,
    metadata: Map<String, Value>,
    vector: Vec<f32>,
    /// Where it sorts: a collection's chunks by document and number (a scroll returns them by
    /// point id), texts by line.
    order: (String, u32),
}

/// `--where KEY=VALUE` as a match condition.
fn condition(raw: &str) -> anyhow::Result<v1::Condition> {
    let (key, value) = raw.split_once('=').with_context(|| format!("--where {raw:?}: expected KEY=VALUE"))?;
    anyhow::ensure!(!key.is_empty(), "--where {raw:?}: empty key");
    let kind = match value {
        "true" => v1::value::Kind::Boolean(true),
        "false" => v1::value::Kind::Boolean(false),
        v => match v.parse::<i64>() {
            Ok(i) => v1::value::Kind::Integer(i),
            Err(_) => v1::value::Kind::Keyword(v.to_string()),
        },
    };
    Ok(v1::Condition {
        key: key.to_string(),
        test: Some(v1::condition::Test::Match(v1::Value { kind: Some(kind) })),
    })
}

fn clip(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
}

/// A metadata value as a colour group ("" when absent).
fn group_of(metadata: &Map<String, Value>, key: &str) -> String {
    match metadata.get(key) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The texts of a `--texts` file: plain lines, or JSON objects with "text".
fn read_texts(path: &std::path::Path) -> anyhow::Result<Vec<(String, Map<String, Value>)>> {
    let body = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('{') {
            let mut v: Map<String, Value> =
                serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?;
            let Some(Value::String(text)) = v.remove("text") else {
                anyhow::bail!("{}:{}: needs a string field \"text\"", path.display(), i + 1);
            };
            out.push((text, v));
        } else {
            out.push((line.to_string(), Map::new()));
        }
    }
    Ok(out)
}

/// Texts per Embed call.
const EMBED_BATCH: usize = 32;
/// Chunks per Scroll page.
const PAGE: usize = 256;

async fn from_texts(args: &MapArgs, path: &std::path::Path) -> anyhow::Result<(Vec<Item>, String)> {
    let texts = read_texts(path)?;
    anyhow::ensure!(texts.len() >= 2, "{}: a map needs at least two texts", path.display());
    let e = &args.endpoint;
    let channel = crate::client::channel(&args.embedder, &e.discovery, "embedder", &e.caller).await?;
    let mut c = EmbedderClient::new(channel)
        .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
        .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES);
    let mut items = Vec::with_capacity(texts.len());
    let mut model = args.model.clone();
    for batch in texts.chunks(EMBED_BATCH) {
        let r = c
            .embed(v1::EmbedRequest {
                texts: batch.iter().map(|(t, _)| t.clone()).collect(),
                model: args.model.clone(),
                ..Default::default()
            })
            .await
            .map_err(status)
            .context("embedding the texts")?
            .into_inner();
        anyhow::ensure!(r.embeddings.len() == batch.len(), "the embedder answered too few vectors");
        model = r.model;
        for ((text, metadata), e) in batch.iter().zip(r.embeddings) {
            let order = (String::new(), items.len() as u32);
            items.push(Item {
                label: clip(text, 300),
                short: clip(text, 28),
                metadata: metadata.clone(),
                vector: e.values,
                order,
            });
        }
    }
    Ok((items, format!("{} texts of {}, embedded with {model}", texts.len(), path.display())))
}

async fn from_collection(args: &MapArgs, name: &str) -> anyhow::Result<(Vec<Item>, String)> {
    let mut c = client(&args.endpoint).await?;
    let info = c
        .describe_collection(v1::DescribeCollectionRequest { name: name.to_string() })
        .await
        .map_err(status)?
        .into_inner();
    let must = args.conditions.iter().map(|raw| condition(raw)).collect::<anyhow::Result<Vec<_>>>()?;
    let filter = (!must.is_empty()).then(|| v1::Filter { must, ..Default::default() });
    let (mut items, mut offset) = (Vec::new(), String::new());
    while items.len() < args.limit {
        let r = c
            .scroll(v1::ScrollRequest {
                collection: name.to_string(),
                filter: filter.clone(),
                limit: (args.limit - items.len()).min(PAGE) as u32,
                offset: offset.clone(),
                with_vectors: true,
            })
            .await
            .map_err(status)
            .with_context(|| format!("scrolling collection {name}"))?
            .into_inner();
        for chunk in r.chunks {
            let mut metadata = chunk.metadata.map(ragd_proto::json::from_struct).unwrap_or_default();
            metadata.insert("doc_id".into(), Value::String(chunk.doc_id.clone()));
            let id = format!("{}#{}", chunk.doc_id, chunk.chunk);
            items.push(Item {
                label: format!("{id}: {}", clip(&chunk.text, 300)),
                short: clip(&id, 28),
                metadata,
                vector: chunk.vector,
                order: (chunk.doc_id, chunk.chunk),
            });
        }
        if r.next_offset.is_empty() {
            break;
        }
        offset = r.next_offset;
    }
    items.sort_by(|a, b| a.order.cmp(&b.order));
    anyhow::ensure!(
        items.len() >= 2,
        "collection {name}: a map needs at least two chunks, found {}",
        items.len()
    );
    let filtered = if args.conditions.is_empty() {
        String::new()
    } else {
        format!(" where {}", args.conditions.join(", "))
    };
    let source = format!(
        "{} chunks of collection {name}{filtered} ({}, {} dimensions)",
        items.len(),
        info.model,
        info.dim
    );
    Ok((items, source))
}

pub async fn map(args: MapArgs) -> anyhow::Result<()> {
    let (items, subtitle, default_title) = match (&args.collection, &args.texts) {
        (Some(name), _) => {
            let (items, sub) = from_collection(&args, name).await?;
            (items, sub, format!("Collection {name}"))
        }
        (None, Some(path)) => {
            let (items, sub) = from_texts(&args, path).await?;
            let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            (items, sub, file)
        }
        (None, None) => anyhow::bail!("--collection NAME or --texts FILE"),
    };
    let title = args.title.clone().unwrap_or(default_title);
    let vectors: Vec<Vec<f32>> = items.iter().map(|i| i.vector.clone()).collect();
    let projection = pca2(&vectors).context("vectors of different lengths cannot share a map")?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let colour_key = args.colour_by.clone().unwrap_or_default();
    let points: Vec<MapPoint> = items
        .iter()
        .zip(&projection.coords)
        .map(|(item, [x, y])| MapPoint {
            label: item.label.clone(),
            group: if colour_key.is_empty() { String::new() } else { group_of(&item.metadata, &colour_key) },
            x: *x,
            y: *y,
        })
        .collect();
    let method = format!(
        "PCA: PC1 holds {:.1}% of the variance, PC2 {:.1}%.",
        projection.explained[0] * 100.0,
        projection.explained[1] * 100.0
    );
    let info = PageInfo {
        title: &title,
        subtitle: &subtitle,
        colour_key: &colour_key,
        method: &method,
        axes: ["PC1", "PC2"],
    };
    let html = args.out.join("map.html");
    std::fs::write(&html, html_page(&info, &points))
        .with_context(|| format!("writing {}", html.display()))?;
    let mut pages = vec![html];
    let tsne = if args.tsne {
        let perplexity = tsne_perplexity(items.len()).context("--tsne: t-SNE needs at least 4 vectors")?;
        let (v, start) = (vectors.clone(), projection.coords.clone());
        let coords = tokio::task::spawn_blocking(move || tsne2(&v, &start))
            .await
            .context("t-SNE")?
            .context("--tsne: t-SNE needs at least 4 vectors of one length")?;
        let moved: Vec<MapPoint> =
            points.iter().zip(&coords).map(|(p, [x, y])| MapPoint { x: *x, y: *y, ..p.clone() }).collect();
        let kind = if items.len() <= TSNE_EXACT_MAX { "exact" } else { "Barnes-Hut, θ 0.5" };
        let method = format!(
            "t-SNE ({kind}, perplexity {perplexity}, 1000 iterations, started from the PCA map): near points are similar; distances between groups mean little."
        );
        let info = PageInfo { method: &method, axes: ["t-SNE 1", "t-SNE 2"], ..info };
        let page = args.out.join("map-tsne.html");
        std::fs::write(&page, html_page(&info, &moved))
            .with_context(|| format!("writing {}", page.display()))?;
        pages.push(page);
        Some(coords)
    } else {
        None
    };
    let shown = items.len().min(args.heatmap_limit.max(2));
    let labels: Vec<String> = items[..shown].iter().map(|i| i.short.clone()).collect();
    let matrix = cosine_matrix(&vectors[..shown]);
    let heat_title = format!("{title}: cosine similarity");
    let drawn = ragd_eval::plot::heatmap(
        &args.out.join("heatmap"),
        &ragd_eval::plot::Heatmap { title: &heat_title, labels: &labels, values: &matrix },
    )?;
    let files: Vec<String> = pages.iter().chain(drawn.iter()).map(|p| p.display().to_string()).collect();
    let report = json!({
        "title": title,
        "source": subtitle,
        "points": points
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut point = json!({"label": p.label, "group": p.group, "x": p.x, "y": p.y});
                if let Some(t) = &tsne {
                    point["tsne"] = json!(t[i]);
                }
                point
            })
            .collect::<Vec<_>>(),
        "explained_variance": projection.explained,
        "heatmap_vectors": shown,
        "files": files,
    });
    std::fs::write(args.out.join("map.json"), serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.out.join("map.json").display()))?;
    if args.endpoint.json {
        println!("{report}");
    } else {
        println!("{subtitle}");
        println!(
            "PCA: PC1 {:.1}% and PC2 {:.1}% of the variance; heatmap of the first {shown}",
            projection.explained[0] * 100.0,
            projection.explained[1] * 100.0
        );
        for f in report["files"].as_array().into_iter().flatten() {
            println!("wrote {}", f.as_str().unwrap_or(""));
        }
        println!("wrote {}", args.out.join("map.json").display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn where_values_take_their_type() {
        let kind = |raw: &str| condition(raw).expect("valid").test;
        let m = |k| Some(v1::condition::Test::Match(v1::Value { kind: Some(k) }));
        assert_eq!(kind("lang=en"), m(v1::value::Kind::Keyword("en".into())));
        assert_eq!(kind("year=1999"), m(v1::value::Kind::Integer(1999)));
        assert_eq!(kind("ok=true"), m(v1::value::Kind::Boolean(true)));
        assert_eq!(condition("a=b=c").expect("valid").key, "a");
        assert!(condition("novalue").is_err());
        assert!(condition("=x").is_err());
    }

    #[test]
    fn texts_file_lines_or_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "plain line\n\n{\"text\": \"json line\", \"kind\": \"q\", \"n\": 2}\n")
            .expect("write");
        let t = read_texts(&path).expect("read");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0], ("plain line".to_string(), Map::new()));
        assert_eq!(t[1].0, "json line");
        assert_eq!(group_of(&t[1].1, "kind"), "q");
        assert_eq!(group_of(&t[1].1, "n"), "2");
        assert_eq!(group_of(&t[1].1, "missing"), "");
        std::fs::write(&path, "{\"title\": \"no text\"}\n").expect("write");
        let err = read_texts(&path).expect_err("no text field");
        assert!(err.to_string().contains(":1: needs a string field \"text\""), "{err}");
    }
}
