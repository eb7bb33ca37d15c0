//! `ragd map` and the indexer's Scroll, end to end: the CLI (a real process) against an embedder
//! (MiniLM through ONNX Runtime) and an indexer (embedded Qdrant engine) over real gRPC.
//!
//! 1. A map of texts: the PCA coordinates it writes equal numpy's SVD of the embedder's vectors
//!    (a peer implementation, up to each component's sign); the page is loaded by a real browser
//!    (headless Chromium, Debian `chromium-headless-shell`) and its screenshot holds the drawn
//!    points in both groups' colours; every label is in the page for hover.
//! 2. Scroll over gRPC pages through every capital once, filters, and refuses bad input by name;
//!    a map of the collection colours by metadata and honours --limit and --where.

use std::path::{Path, PathBuf};

use ragd_eval::plot::PALETTE;
use ragd_proto::v1;
use ragd_tests::process::ragd_cli;
use ragd_tests::{TestEmbedder, embedder_config, ragd_home};
use serde_json::{Value, json};
use tonic::Code;

/// Six sentences on each of two topics, with their topic as metadata.
const TEXTS: [(&str, &str); 12] = [
    ("food", "Simmer the tomato sauce with garlic and basil for twenty minutes."),
    ("food", "Knead the bread dough until it is smooth, then let it rise."),
    ("food", "Whisk eggs, sugar and butter before folding in the flour."),
    ("food", "Roast the vegetables in olive oil until they caramelise."),
    ("food", "Season the soup with salt, pepper and a squeeze of lemon."),
    ("food", "Grill the fish and serve it with rice and a green salad."),
    ("space", "The telescope observed a distant galaxy billions of light years away."),
    ("space", "Astronauts aboard the space station repaired a solar panel."),
    ("space", "The rocket's second stage placed the satellite in orbit."),
    ("space", "Jupiter's moons were first seen by Galileo in 1610."),
    ("space", "A comet's tail always points away from the Sun."),
    ("space", "The probe landed on Mars and sent back images of red dust."),
];

/// numpy's PCA of `vectors`: scores on the first two components and their variance shares.
const NUMPY_PCA: &str = r#"
import json, sys
import numpy as np
x = np.array(json.load(open(sys.argv[1])), dtype=np.float64)
x = x - x.mean(axis=0)
u, s, vt = np.linalg.svd(x, full_matrices=False)
scores = x @ vt[:2].T
json.dump({"coords": scores.tolist(), "explained": (s[:2] ** 2 / (s ** 2).sum()).tolist()}, sys.stdout)
"#;

fn numpy_pca(vectors: &[Vec<f32>]) -> Value {
    let python = ragd_home().join("venv/bin/python");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("v.json");
    std::fs::write(&input, serde_json::to_string(vectors).expect("json")).expect("write");
    let out = std::process::Command::new(&python)
        .args(["-c", NUMPY_PCA])
        .arg(&input)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup)", python.display()));
    assert!(out.status.success(), "numpy: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("numpy json")
}

/// The headless Chromium that `scripts/setup --with-test` installs (Debian
/// `chromium-headless-shell`), or a failure that says how to get it.
fn chromium() -> PathBuf {
    let found = ["chromium-headless-shell", "chromium"].iter().find_map(|name| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("no headless Chromium on PATH: run scripts/setup --with-test"))
}

/// A screenshot of `page` by a real browser, decoded.
fn screenshot(page: &Path, size: (u32, u32)) -> image::RgbImage {
    let shot = page.with_file_name("screenshot.png");
    let out = std::process::Command::new(chromium())
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    assert!(out.status.success() && shot.is_file(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    image::open(&shot).expect("screenshot png").to_rgb8()
}

/// The first row below the legend: the legend's swatches (10×10, in the first colour) are the
/// topmost pixels of that colour on the page.
fn below_legend(img: &image::RgbImage) -> u32 {
    let (r, g, b) = PALETTE[0];
    img.enumerate_pixels()
        .filter(|(_, _, p)| p.0 == [r, g, b])
        .map(|(_, y, _)| y)
        .min()
        .expect("first colour on the page")
        + 12
}

/// Pixels of exactly this colour below row `from`.
fn count_below(img: &image::RgbImage, (r, g, b): (u8, u8, u8), from: u32) -> usize {
    img.enumerate_pixels().filter(|(_, y, p)| *y >= from && p.0 == [r, g, b]).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_of_texts_matches_numpy_and_draws_in_a_real_browser() {
    let browser = chromium();
    let embedder = TestEmbedder::start(embedder_config(&["all-MiniLM-L6-v2"])).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let texts = dir.path().join("texts.jsonl");
    let lines: Vec<String> =
        TEXTS.iter().map(|(topic, text)| json!({"text": text, "topic": topic}).to_string()).collect();
    std::fs::write(&texts, lines.join("\n")).expect("write texts");
    let out = dir.path().join("map");
    let (url, t, o) = (embedder.url.clone(), texts.display().to_string(), out.display().to_string());
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        ragd_cli(&[
            "map",
            "--embedder",
            &url,
            "--texts",
            &t,
            "--colour-by",
            "topic",
            "--tsne",
            "--out",
            &o,
            "--json",
        ])
    })
    .await
    .expect("cli");
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("json");
    let points = report["points"].as_array().expect("points");
    assert_eq!(points.len(), 12);

    // The embedder's vectors for the same texts, projected by numpy.
    let r = embedder
        .client()
        .await
        .embed(v1::EmbedRequest {
            texts: TEXTS.iter().map(|(_, t)| t.to_string()).collect(),
            ..Default::default()
        })
        .await
        .expect("embed")
        .into_inner();
    let vectors: Vec<Vec<f32>> = r.embeddings.into_iter().map(|e| e.values).collect();
    let theirs = numpy_pca(&vectors);
    for k in 0..2 {
        let share = report["explained_variance"][k].as_f64().expect("share");
        let peer = theirs["explained"][k].as_f64().expect("peer share");
        assert!((share - peer).abs() < 1e-5, "PC{}: ragd {share}, numpy {peer}", k + 1);
        // Same component up to its sign: fix the sign on the largest score.
        let ours: Vec<f64> =
            points.iter().map(|p| p[if k == 0 { "x" } else { "y" }].as_f64().expect("coord")).collect();
        let peer: Vec<f64> =
            theirs["coords"].as_array().expect("coords").iter().map(|c| c[k].as_f64().expect("c")).collect();
        let far = (0..12).max_by(|a, b| peer[*a].abs().total_cmp(&peer[*b].abs())).expect("max");
        let sign = (ours[far] * peer[far]).signum();
        for (i, (a, b)) in ours.iter().zip(&peer).enumerate() {
            assert!((a - sign * b).abs() < 1e-4, "point {i} PC{}: ragd {a}, numpy {b}", k + 1);
        }
    }
    // Colours by topic, labels are the texts.
    for (p, (topic, text)) in points.iter().zip(TEXTS) {
        assert_eq!(p["group"], topic);
        assert_eq!(p["label"], text);
    }
    // Cooking and astronomy are far apart for MiniLM: PC1 separates them.
    let side = |topic: &str| {
        points
            .iter()
            .filter(|p| p["group"] == topic)
            .map(|p| p["x"].as_f64().expect("x").signum())
            .sum::<f64>()
    };
    assert_eq!(side("food").abs() + side("space").abs(), 12.0, "PC1 splits the topics: {points:?}");

    // The page: every label present for hover, loaded by a real browser, points drawn.
    let html = std::fs::read_to_string(out.join("map.html")).expect("map.html");
    assert_eq!(html.matches("<circle ").count(), 12);
    for (_, text) in TEXTS {
        // HTML-escaped, as the page must hold it ("rocket's" → "rocket&#39;s").
        let escaped = text.replace('\'', "&#39;");
        assert!(html.contains(&format!("<title>{escaped}</title>")), "{text} labelled");
    }
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "self-contained");
    let img = screenshot(&out.join("map.html"), (1000, 800));
    // The legend's swatches (10×10) sit above the plot; count the plot's pixels only: below the
    // last row any legend swatch reaches.
    let legend_bottom = below_legend(&img);
    for (i, topic) in ["food", "space"].iter().enumerate() {
        // Six circles of radius 5 (≈ 50 pixels of solid fill each, overlaps aside).
        let n = count_below(&img, PALETTE[i], legend_bottom);
        assert!(n >= 120, "{topic}: {n} pixels of its colour drawn (browser {})", browser.display());
    }
    assert_eq!(count_below(&img, PALETTE[2], 0), 0, "only two groups");

    // The t-SNE page: the same points at their t-SNE coordinates, drawn by the browser too.
    for p in points {
        let t = p["tsne"].as_array().expect("t-SNE coordinates");
        assert!(t.len() == 2 && t.iter().all(|c| c.as_f64().is_some_and(f64::is_finite)), "{p}");
    }
    let tsne_page = std::fs::read_to_string(out.join("map-tsne.html")).expect("map-tsne.html");
    assert_eq!(tsne_page.matches("<circle ").count(), 12);
    assert!(tsne_page.contains("t-SNE (exact, perplexity 3,"), "12 points: perplexity (12 − 1) / 3");
    let img = screenshot(&out.join("map-tsne.html"), (1000, 800));
    let legend_bottom = below_legend(&img);
    for (i, colour) in PALETTE[..2].iter().enumerate() {
        assert!(count_below(&img, *colour, legend_bottom) >= 120, "t-SNE page: group {i} drawn");
    }

    // The heatmap of the 12 texts, both formats.
    assert!(out.join("heatmap.svg").is_file() && out.join("heatmap.png").is_file());
    let heat = image::open(out.join("heatmap.png")).expect("heatmap png").to_rgb8();
    let top = ragd_eval::plot::viridis(1.0);
    assert!(
        heat.pixels().filter(|p| p.0 == [top.0, top.1, top.2]).count() >= 12 * 16,
        "the diagonal at least"
    );

    // Bad input: a file with one text; neither source.
    std::fs::write(&texts, "only one\n").expect("write");
    let (url, t, o) = (embedder.url.clone(), texts.display().to_string(), out.display().to_string());
    let (one, none) = tokio::task::spawn_blocking(move || {
        (ragd_cli(&["map", "--embedder", &url, "--texts", &t, "--out", &o]), ragd_cli(&["map", "--out", &o]))
    })
    .await
    .expect("cli");
    assert!(!one.0 && one.2.contains("at least two texts"), "{}", one.2);
    assert!(!none.0 && none.2.contains("--collection"), "{}", none.2);
    embedder.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scroll_pages_filters_and_maps_a_collection() {
    let data = tempfile::tempdir().expect("tempdir");
    let (embedder, indexer) = ragd_tests::capitals_cluster(&data.path().join("indexer")).await;
    let mut c = indexer.client().await;
    let scroll = |limit: u32, offset: String, filter: Option<v1::Filter>| v1::ScrollRequest {
        collection: "capitals".into(),
        filter,
        limit,
        offset,
        with_vectors: true,
    };
    let (mut seen, mut offset, mut pages) = (std::collections::BTreeSet::new(), String::new(), 0);
    loop {
        let r = c.scroll(scroll(100, offset.clone(), None)).await.expect("scroll").into_inner();
        pages += 1;
        for chunk in &r.chunks {
            assert_eq!(chunk.vector.len(), 384);
            assert!(chunk.text.starts_with("The capital of "), "{}", chunk.text);
            let meta = chunk.metadata.clone().map(ragd_proto::json::from_struct).unwrap_or_default();
            assert_eq!(meta["country"], chunk.doc_id.as_str());
            assert!(seen.insert(chunk.doc_id.clone()), "{} twice", chunk.doc_id);
        }
        if r.next_offset.is_empty() {
            break;
        }
        offset = r.next_offset;
    }
    assert_eq!((seen.len(), pages), (238, 3));
    let two = v1::Filter {
        must: vec![v1::Condition {
            key: "country".into(),
            test: Some(v1::condition::Test::MatchAny(v1::ValueList {
                values: ["France", "Japan"]
                    .iter()
                    .map(|k| v1::Value { kind: Some(v1::value::Kind::Keyword(k.to_string())) })
                    .collect(),
            })),
        }],
        ..Default::default()
    };
    let r = c.scroll(scroll(0, String::new(), Some(two))).await.expect("filtered").into_inner();
    let mut ids: Vec<String> = r.chunks.iter().map(|c| c.doc_id.clone()).collect();
    ids.sort();
    assert_eq!((ids, r.next_offset.as_str()), (vec!["France".to_string(), "Japan".to_string()], ""));
    // Bad inputs, each by name.
    let code = |r: Result<tonic::Response<v1::ScrollResponse>, tonic::Status>| {
        let s = r.expect_err("refused");
        (s.code(), s.message().to_string())
    };
    let (k, m) = code(c.scroll(scroll(10_001, String::new(), None)).await);
    assert!(k == Code::InvalidArgument && m.contains("limit"), "{k:?} {m}");
    let (k, m) = code(c.scroll(scroll(5, "7:nonsense".into(), None)).await);
    assert!(k == Code::InvalidArgument && m.contains("offset"), "{k:?} {m}");
    let (k, _) = code(
        c.scroll(v1::ScrollRequest { collection: "nope".into(), ..scroll(5, String::new(), None) }).await,
    );
    assert_eq!(k, Code::NotFound);

    // The CLI's map of the collection: --limit, --where, colours by country.
    let out = data.path().join("map");
    let (url, o) = (indexer.url.clone(), out.display().to_string());
    let (all, filtered) = tokio::task::spawn_blocking(move || {
        let all = ragd_cli(&[
            "map",
            "--indexer",
            &url,
            "--collection",
            "capitals",
            "--limit",
            "40",
            "--colour-by",
            "country",
            "--out",
            &o,
            "--json",
        ]);
        let filtered = ragd_cli(&[
            "map",
            "--indexer",
            &url,
            "--collection",
            "capitals",
            "--where",
            "country=France",
            "--where",
            "country=Japan",
            "--out",
            &o,
        ]);
        (all, filtered)
    })
    .await
    .expect("cli");
    assert!(all.0, "{}", all.2);
    let report: Value = serde_json::from_str(&all.1).expect("json");
    assert_eq!(report["points"].as_array().expect("points").len(), 40);
    assert_eq!(report["heatmap_vectors"], 40);
    for p in report["points"].as_array().expect("points") {
        let country = p["group"].as_str().expect("group");
        assert!(
            !country.is_empty() && p["label"].as_str().expect("label").starts_with(&format!("{country}#0: ")),
            "{p}"
        );
    }
    // Both conditions must hold: no capital is in France and Japan, so nothing to map.
    assert!(!filtered.0 && filtered.2.contains("at least two chunks, found 0"), "{}", filtered.2);
    indexer.stop().await.expect("stop indexer");
    embedder.stop().await.expect("stop");
}
