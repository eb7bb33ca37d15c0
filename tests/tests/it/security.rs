//! TLS and access control with real parts: certificates made here (rcgen), real handshakes over
//! loopback, real `ragd` processes, and outside clients (grpcurl, `openssl s_client`).
//!
//! - the matrix: every RPC of the three services × {no credential, wrong key, expired key,
//!   expired token, token of an unknown signer, read key of A, write key of A, manage key, a key
//!   of B, a token with write on A} → the expected code. The expectations are this file's own
//!   reading of the policy (never the server's table); the set of RPCs is read from the protos,
//!   so a new RPC without a row here (or in the server's table) fails the test;
//! - service-to-service credentials: the indexer embeds with a key that may only embed, the
//!   generator retrieves with a key that may only read;
//! - no key or token ever appears in a service's log (debug level) or metrics;
//! - mutual TLS, and rotation of certificates and keys under load;
//! - start-up refusals that name the file; `ragd up` with generated certificates and keys.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use ragd_core::auth::key_digest_hex;
use ragd_core::jwt::{Claims, SigningKey, generate_signing_key};
use ragd_core::pki::{Ca, write};
use ragd_core::tls::{ClientTls, ClientTlsArgs};
use ragd_proto::v1::{
    self, embedder_client::EmbedderClient, generator_client::GeneratorClient, indexer_client::IndexerClient,
};
use ragd_tests::process::{RagdProcess, model_env, ragd_cli};
use ragd_tests::{free_port, grpcurl, llm_model};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// What a credential may do, as this test understands the policy.
#[derive(Debug, Clone, Copy)]
struct Who {
    valid: bool,
    /// 0 none, 1 read, 2 write, 3 manage — on collection "a".
    role_on_a: u8,
    embed: bool,
    generate: bool,
}

const INVALID: Who = Who { valid: false, role_on_a: 0, embed: false, generate: false };

/// What each RPC needs, as this test understands the policy.
#[derive(Debug, Clone, Copy)]
enum Spec {
    Embed,
    Generate,
    /// A role on the request's collection.
    Coll(u8),
    /// generate + read on the collection.
    Ask,
    /// Any valid credential.
    Listing,
}

const MATRIX: &[(&str, Spec)] = &[
    ("/ragd.v1.Embedder/Embed", Spec::Embed),
    ("/ragd.v1.Embedder/EmbedStream", Spec::Embed),
    ("/ragd.v1.Embedder/CountTokens", Spec::Embed),
    ("/ragd.v1.Embedder/Tokenize", Spec::Embed),
    ("/ragd.v1.Embedder/ListModels", Spec::Embed),
    ("/ragd.v1.Embedder/ModelInfo", Spec::Embed),
    ("/ragd.v1.Indexer/ListCollections", Spec::Listing),
    ("/ragd.v1.Indexer/DescribeCollection", Spec::Coll(1)),
    ("/ragd.v1.Indexer/Search", Spec::Coll(1)),
    ("/ragd.v1.Indexer/DocumentStatus", Spec::Coll(1)),
    ("/ragd.v1.Indexer/GetDocument", Spec::Coll(1)),
    ("/ragd.v1.Indexer/Scroll", Spec::Coll(1)),
    ("/ragd.v1.Indexer/UpsertBatch", Spec::Coll(2)),
    ("/ragd.v1.Indexer/Upsert", Spec::Coll(2)),
    ("/ragd.v1.Indexer/Delete", Spec::Coll(2)),
    ("/ragd.v1.Indexer/CreateCollection", Spec::Coll(3)),
    ("/ragd.v1.Indexer/DropCollection", Spec::Coll(3)),
    ("/ragd.v1.Indexer/ReindexKeywords", Spec::Coll(3)),
    ("/ragd.v1.Indexer/CreateSnapshot", Spec::Coll(3)),
    ("/ragd.v1.Indexer/RestoreSnapshot", Spec::Coll(3)),
    ("/ragd.v1.Indexer/DeleteSnapshot", Spec::Coll(3)),
    ("/ragd.v1.Indexer/ListSnapshots", Spec::Listing),
    ("/ragd.v1.Generator/Generate", Spec::Generate),
    ("/ragd.v1.Generator/ListBackends", Spec::Generate),
    ("/ragd.v1.Generator/Ask", Spec::Ask),
];

fn expected(spec: Spec, who: Who) -> Code {
    if !who.valid {
        return Code::Unauthenticated;
    }
    let allowed = match spec {
        Spec::Embed => who.embed,
        Spec::Generate => who.generate,
        Spec::Coll(r) => who.role_on_a >= r,
        Spec::Ask => who.generate && who.role_on_a >= 1,
        Spec::Listing => true,
    };
    if allowed { Code::Ok } else { Code::PermissionDenied }
}

/// Every `/package.Service/Method` of ragd's protos.
fn proto_rpcs() -> BTreeSet<String> {
    let set =
        prost_types::FileDescriptorSet::decode(ragd_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let mut rpcs = BTreeSet::new();
    for f in set.file {
        for s in &f.service {
            for m in &s.method {
                rpcs.insert(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
            }
        }
    }
    rpcs
}

#[test]
fn every_rpc_of_the_protos_is_in_the_permission_table_and_the_matrix() {
    let protos = proto_rpcs();
    assert!(protos.len() >= 18, "{protos:?}");
    let table: BTreeSet<String> = ragd_core::auth::RPCS.iter().map(|(p, _)| p.to_string()).collect();
    let matrix: BTreeSet<String> = MATRIX.iter().map(|(p, _)| p.to_string()).collect();
    for rpc in &protos {
        assert!(
            table.contains(rpc),
            "{rpc} is not in ragd_core::auth::RPCS: it would be refused to everyone"
        );
        assert!(matrix.contains(rpc), "{rpc} has no row in this test's matrix");
    }
    assert_eq!(matrix.len(), MATRIX.len(), "a matrix row is listed twice");
}

/// Certificates, keys, tokens and files of one test.
struct Material {
    dir: tempfile::TempDir,
    /// (label, credential, who)
    creds: Vec<(&'static str, Option<String>, Who)>,
    manage: String,
    metrics: String,
    read_a: String,
    indexer_svc: String,
    generator_svc: String,
}

impl Material {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Every secret of the test (keys and tokens), to look for in logs.
    fn secrets(&self) -> Vec<String> {
        let mut s: Vec<String> = self.creds.iter().filter_map(|(_, c, _)| c.clone()).collect();
        s.extend([
            self.manage.clone(),
            self.metrics.clone(),
            self.indexer_svc.clone(),
            self.generator_svc.clone(),
        ]);
        s.retain(|c| c.len() > 8);
        s
    }
}

fn key_entry(name: &str, key: &str, expires: Option<&str>, grants: &str) -> String {
    let expires = expires.map(|e| format!("expires = \"{e}\"\n")).unwrap_or_default();
    format!(
        "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\n{expires}grants = [{grants}]\n\n",
        key_digest_hex(key)
    )
}

fn material() -> Material {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("ragd test CA").expect("ca");
    let server = ca.leaf("ragd", &["localhost", "127.0.0.1"]).expect("server cert");
    let client = ca.client("test-client").expect("client cert");
    let p = |n: &str| dir.path().join(n);
    write(&p("ca.pem"), &ca.cert_pem).expect("write");
    write(&p("server.pem"), &server.cert_pem).expect("write");
    write(&p("server-key.pem"), &server.key_pem).expect("write");
    write(&p("client.pem"), &client.cert_pem).expect("write");
    write(&p("client-key.pem"), &client.key_pem).expect("write");

    let key = |n: &str| format!("ragd_test_{n}_{}", free_port());
    let (read_a, write_a, manage, key_b, expired, metrics) =
        (key("read-a"), key("write-a"), key("manage"), key("b"), key("expired"), key("metrics"));
    let (indexer_svc, generator_svc) = (key("indexer-svc"), key("generator-svc"));
    let mut keys = String::new();
    keys += &key_entry("reader-a", &read_a, None, r#"{ collection = "a", role = "read" }"#);
    keys += &key_entry(
        "writer-a",
        &write_a,
        Some("2100-01-01T00:00:00Z"),
        r#"{ collection = "a", role = "write" }"#,
    );
    keys += &key_entry(
        "manager",
        &manage,
        None,
        r#"{ collection = "*", role = "manage" }, { service = "embed" }, { service = "generate" }"#,
    );
    keys += &key_entry("owner-b", &key_b, None, r#"{ collection = "b", role = "manage" }"#);
    keys += &key_entry(
        "expired",
        &expired,
        Some("2001-01-01T00:00:00Z"),
        r#"{ collection = "*", role = "manage" }"#,
    );
    keys += &key_entry("prometheus", &metrics, None, r#"{ service = "metrics" }"#);
    keys += &key_entry("indexer-svc", &indexer_svc, None, r#"{ service = "embed" }"#);
    keys += &key_entry("generator-svc", &generator_svc, None, r#"{ collection = "*", role = "read" }"#);
    // A principal named by its client certificate (mutual TLS) instead of a key.
    keys += "[[keys]]\nname = \"client-cert\"\nclient_cert_cn = \"test-client\"\ngrants = [{ service = \"embed\" }]\n\n";
    write(&p("keys.toml"), &keys).expect("write");
    write(&p("indexer.key"), &indexer_svc).expect("write");
    write(&p("generator.key"), &generator_svc).expect("write");

    let signer = SigningKey::from_pem(generate_signing_key().expect("key").as_bytes()).expect("signer");
    write(&p("jwks.json"), &signer.jwks_json()).expect("write");
    let stranger = SigningKey::from_pem(generate_signing_key().expect("key").as_bytes()).expect("signer");
    let now = chrono::Utc::now().timestamp();
    let grants = |g: &[&str]| g.iter().map(|s| s.parse().expect("grant")).collect::<Vec<_>>();
    let claims = |sub: &str, exp: i64, g: &[&str]| Claims {
        sub: sub.into(),
        exp,
        nbf: None,
        iat: Some(now),
        grants: grants(g),
    };
    let expired_jwt = signer.mint(&claims("late", now - 3600, &["manage:*"]));
    let unknown_jwt = stranger.mint(&claims("stranger", now + 3600, &["manage:*", "embed", "generate"]));
    let jwt_write_a = signer.mint(&claims("ci-job", now + 3600, &["write:a"]));

    let creds = vec![
        ("no credential", None, INVALID),
        ("wrong key", Some("ragd_not_a_key_of_this_cluster".to_string()), INVALID),
        ("expired key", Some(expired), INVALID),
        ("expired token", Some(expired_jwt), INVALID),
        ("token of an unknown signer", Some(unknown_jwt), INVALID),
        (
            "read key of a",
            Some(read_a.clone()),
            Who { valid: true, role_on_a: 1, embed: false, generate: false },
        ),
        ("write key of a", Some(write_a), Who { valid: true, role_on_a: 2, embed: false, generate: false }),
        ("manage key", Some(manage.clone()), Who { valid: true, role_on_a: 3, embed: true, generate: true }),
        ("key of b", Some(key_b), Who { valid: true, role_on_a: 0, embed: false, generate: false }),
        (
            "token with write on a",
            Some(jwt_write_a),
            Who { valid: true, role_on_a: 2, embed: false, generate: false },
        ),
    ];
    Material { dir, creds, manage, metrics, read_a, indexer_svc, generator_svc }
}

fn tls_to(ca: &Path, client_cert: Option<(&Path, &Path)>) -> ClientTls {
    ClientTls::new(&ClientTlsArgs {
        upstream_tls_ca: Some(ca.to_path_buf()),
        upstream_tls_cert: client_cert.map(|c| c.0.to_path_buf()),
        upstream_tls_key: client_cert.map(|c| c.1.to_path_buf()),
        ..ClientTlsArgs::default()
    })
    .expect("client tls")
}

async fn channel(addr: &str, tls: &ClientTls) -> Channel {
    ragd_core::client::connect_with(&format!("https://{addr}"), Some(tls.clone())).await.expect("tls connect")
}

async fn wait_serving_tls(addr: &str, tls: &ClientTls, service: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let status = async {
            let ch = ragd_core::client::connect_with(&format!("https://{addr}"), Some(tls.clone()))
                .await
                .map_err(|e| format!("connect: {e:?}"))?;
            HealthClient::new(ch)
                .check(HealthCheckRequest { service: service.into() })
                .await
                .map(|r| r.into_inner().status)
                .map_err(|e| format!("check: {e:?}"))
        }
        .await;
        if status == Ok(1) {
            return;
        }
        assert!(Instant::now() < deadline, "{service} at {addr} never became SERVING over TLS: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn req<T>(msg: T, cred: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(c) = cred {
        r.metadata_mut().insert("authorization", format!("Bearer {c}").parse().expect("header"));
    }
    r.set_timeout(Duration::from_secs(60));
    r
}

fn code<T>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// Asks where Paris is the answer; the first retrieved passage must be the "paris" document.
async fn ask_finds_paris(channel: Channel, collection: &str, key: &str) {
    let s = GeneratorClient::new(channel)
        .ask(req(
            v1::AskRequest {
                question: "What is the capital of France?".into(),
                collection: collection.into(),
                sampling: Some(v1::Sampling { max_tokens: 8, ..Default::default() }),
                ..Default::default()
            },
            Some(key),
        ))
        .await
        .expect("ask")
        .into_inner();
    let (retrieval, _, _) = ragd_tests::collect_ask(s).await;
    assert_eq!(retrieval.passages.first().map(|h| h.doc_id.as_str()), Some("paris"));
}

fn doc(id: &str) -> v1::Document {
    v1::Document {
        id: id.into(),
        text: "Paris is the capital of France.".into(),
        metadata: None,
        vector: Vec::new(),
    }
}

fn text_query(q: &str) -> v1::Query {
    v1::Query { query: Some(v1::query::Query::Text(q.into())) }
}

/// Calls `rpc` on collection "a" with `cred`; its code and message.
async fn call(rpc: &str, ch: &Channels, cred: Option<&str>) -> (Code, String) {
    let mut e = EmbedderClient::new(ch.embedder.clone());
    let mut i = IndexerClient::new(ch.indexer.clone());
    let mut g = GeneratorClient::new(ch.generator.clone());
    let embed = || v1::EmbedRequest { texts: vec!["hello".into()], ..Default::default() };
    let a = || "a".to_string();
    match rpc {
        "/ragd.v1.Embedder/Embed" => code(e.embed(req(embed(), cred)).await),
        "/ragd.v1.Embedder/EmbedStream" => {
            let s = tokio_stream::iter(vec![v1::EmbedStreamRequest { id: 1, request: Some(embed()) }]);
            code(e.embed_stream(req(s, cred)).await)
        }
        "/ragd.v1.Embedder/CountTokens" => code(
            e.count_tokens(req(
                v1::CountTokensRequest { texts: vec!["x".into()], ..Default::default() },
                cred,
            ))
            .await,
        ),
        "/ragd.v1.Embedder/Tokenize" => code(
            e.tokenize(req(v1::TokenizeRequest { texts: vec!["x".into()], ..Default::default() }, cred))
                .await,
        ),
        "/ragd.v1.Embedder/ListModels" => code(e.list_models(req(v1::ListModelsRequest {}, cred)).await),
        "/ragd.v1.Embedder/ModelInfo" => {
            code(e.model_info(req(v1::ModelInfoRequest { name: "all-MiniLM-L6-v2".into() }, cred)).await)
        }
        "/ragd.v1.Indexer/ListCollections" => {
            code(i.list_collections(req(v1::ListCollectionsRequest {}, cred)).await)
        }
        "/ragd.v1.Indexer/DescribeCollection" => {
            code(i.describe_collection(req(v1::DescribeCollectionRequest { name: a() }, cred)).await)
        }
        "/ragd.v1.Indexer/Search" => code(
            i.search(req(
                v1::SearchRequest {
                    collection: a(),
                    queries: vec![text_query("capital")],
                    k: 1,
                    ..Default::default()
                },
                cred,
            ))
            .await,
        ),
        "/ragd.v1.Indexer/ReindexKeywords" => code(
            i.reindex_keywords(req(v1::ReindexKeywordsRequest { collection: a(), keyword: None }, cred))
                .await,
        ),
        "/ragd.v1.Indexer/CreateSnapshot" => code(
            i.create_snapshot(req(v1::CreateSnapshotRequest { collection: a(), name: String::new() }, cred))
                .await,
        ),
        // Into "a" itself, which exists: ALREADY_EXISTS once the grants let it through.
        "/ragd.v1.Indexer/RestoreSnapshot" => code(
            i.restore_snapshot(req(
                v1::RestoreSnapshotRequest { collection: a(), snapshot: "none".into(), target: a() },
                cred,
            ))
            .await,
        ),
        "/ragd.v1.Indexer/DeleteSnapshot" => code(
            i.delete_snapshot(req(
                v1::DeleteSnapshotRequest { collection: a(), snapshot: "none".into() },
                cred,
            ))
            .await,
        ),
        "/ragd.v1.Indexer/ListSnapshots" => {
            code(i.list_snapshots(req(v1::ListSnapshotsRequest { collection: String::new() }, cred)).await)
        }
        "/ragd.v1.Indexer/Scroll" => code(
            i.scroll(req(v1::ScrollRequest { collection: a(), limit: 2, ..Default::default() }, cred)).await,
        ),
        "/ragd.v1.Indexer/DocumentStatus" => code(
            i.document_status(req(v1::DocumentStatusRequest { collection: a(), id: "paris".into() }, cred))
                .await,
        ),
        "/ragd.v1.Indexer/GetDocument" => code(
            i.get_document(req(
                v1::GetDocumentRequest { collection: a(), id: "paris".into(), with_vectors: false },
                cred,
            ))
            .await,
        ),
        "/ragd.v1.Indexer/UpsertBatch" => code(
            i.upsert_batch(req(v1::UpsertRequest { collection: a(), documents: vec![doc("m1")] }, cred))
                .await,
        ),
        "/ragd.v1.Indexer/Upsert" => {
            let s =
                tokio_stream::iter(vec![v1::UpsertRequest { collection: a(), documents: vec![doc("m2")] }]);
            code(i.upsert(req(s, cred)).await)
        }
        "/ragd.v1.Indexer/Delete" => {
            code(i.delete(req(v1::DeleteRequest { collection: a(), ids: vec!["m1".into()] }, cred)).await)
        }
        "/ragd.v1.Indexer/CreateCollection" => code(
            i.create_collection(req(v1::CreateCollectionRequest { name: a(), ..Default::default() }, cred))
                .await,
        ),
        // Dropped and re-created by the manage key (every other credential is refused before).
        "/ragd.v1.Indexer/DropCollection" => {
            let r = code(i.drop_collection(req(v1::DropCollectionRequest { name: a() }, cred)).await);
            if r.0 == Code::Ok {
                let _ = i
                    .create_collection(req(
                        v1::CreateCollectionRequest { name: a(), ..Default::default() },
                        cred,
                    ))
                    .await;
            }
            r
        }
        "/ragd.v1.Generator/Generate" => code(
            g.generate(req(
                v1::GenerateRequest {
                    input: Some(v1::generate_request::Input::Prompt("Hi".into())),
                    sampling: Some(v1::Sampling { max_tokens: 2, ..Default::default() }),
                    ..Default::default()
                },
                cred,
            ))
            .await,
        ),
        "/ragd.v1.Generator/ListBackends" => {
            code(g.list_backends(req(v1::ListBackendsRequest {}, cred)).await)
        }
        "/ragd.v1.Generator/Ask" => code(
            g.ask(req(
                v1::AskRequest {
                    question: "What is the capital of France?".into(),
                    collection: a(),
                    sampling: Some(v1::Sampling { max_tokens: 2, ..Default::default() }),
                    ..Default::default()
                },
                cred,
            ))
            .await,
        ),
        other => panic!("no call for {other}"),
    }
}

/// Every RPC of the matrix with every credential of `m`, against the policy as this file reads it.
async fn run_matrix(m: &Material, ch: &Channels) {
    let mut checked = 0;
    for (rpc, spec) in MATRIX {
        for (label, cred, who) in &m.creds {
            let want = expected(*spec, *who);
            let (got, msg) = call(rpc, ch, cred.as_deref()).await;
            match want {
                Code::Ok => assert!(
                    !matches!(got, Code::Unauthenticated | Code::PermissionDenied),
                    "{rpc} with {label}: refused ({got:?}: {msg}) but allowed by the policy"
                ),
                _ => {
                    assert_eq!(got, want, "{rpc} with {label}: {msg}");
                    if got == Code::PermissionDenied {
                        assert!(msg.starts_with("missing grant: "), "{rpc} with {label}: {msg}");
                    }
                }
            }
            checked += 1;
        }
    }
    println!("matrix: {checked} calls checked");
}

struct Channels {
    embedder: Channel,
    indexer: Channel,
    generator: Channel,
}

async fn https_get(addr: &str, tls: &ClientTls, path: &str, cred: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut s = tls.connect("127.0.0.1", tcp).await.expect("tls handshake");
    let auth = cred.map(|c| format!("Authorization: Bearer {c}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    let status = body.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, body)
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl (Debian package openssl)");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_access_control_on_every_rpc_of_the_three_services() {
    let m = material();
    let mut env = model_env();
    env.push(("RUST_LOG", "debug,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info,ort=warn".into()));
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--tls-cert",
            &m.arg("server.pem"),
            "--tls-key",
            &m.arg("server-key.pem"),
            "--auth-keys-file",
            &m.arg("keys.toml"),
            "--auth-jwks-file",
            &m.arg("jwks.json"),
            "--upstream-tls-ca",
            &m.arg("ca.pem"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let args = common(&["--metrics-addr", &metrics_addr, "--metrics-auth"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let embedder = RagdProcess::serve_logged("embedder", &refs, &env, &m.path("embedder.log"));
    let data = tempfile::tempdir().expect("tempdir");
    let args = common(&[
        "--embedder-url",
        &format!("https://{}", embedder.addr()),
        "--upstream-key-file",
        &m.arg("indexer.key"),
        "--data-dir",
        &data.path().display().to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let indexer = RagdProcess::serve_logged("indexer", &refs, &env, &m.path("indexer.log"));
    let llm = llm_model().display().to_string();
    let args = common(&[
        "--indexer-url",
        &format!("https://{}", indexer.addr()),
        "--upstream-key-file",
        &m.arg("generator.key"),
        "--llm-model",
        &llm,
        "--llm-parallel",
        "1",
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let generator = RagdProcess::serve_logged("generator", &refs, &env, &m.path("generator.log"));

    // Health stays open without a credential (probes), over TLS.
    let tls = tls_to(&m.path("ca.pem"), None);
    wait_serving_tls(embedder.addr(), &tls, "ragd.v1.Embedder").await;
    wait_serving_tls(indexer.addr(), &tls, "ragd.v1.Indexer").await;
    wait_serving_tls(generator.addr(), &tls, "ragd.v1.Generator").await;
    let ch = Channels {
        embedder: channel(embedder.addr(), &tls).await,
        indexer: channel(indexer.addr(), &tls).await,
        generator: channel(generator.addr(), &tls).await,
    };

    // A plaintext client against a TLS port: UNAVAILABLE, saying why.
    let plain = ragd_core::client::connect(&format!("http://{}", indexer.addr())).await.expect("tcp connect");
    let (c, msg) = code(
        IndexerClient::new(plain).list_collections(req(v1::ListCollectionsRequest {}, Some(&m.manage))).await,
    );
    assert_eq!(c, Code::Unavailable, "{msg}");
    assert!(msg.contains("TLS"), "{msg}");

    // Collections a and b, one document in a: the indexer embeds it with its own key (embed only).
    let mut i = IndexerClient::new(ch.indexer.clone());
    for name in ["a", "b"] {
        i.create_collection(req(
            v1::CreateCollectionRequest { name: name.into(), ..Default::default() },
            Some(&m.manage),
        ))
        .await
        .expect("create");
    }
    let r = i
        .upsert_batch(req(
            v1::UpsertRequest { collection: "a".into(), documents: vec![doc("paris")] },
            Some(&m.manage),
        ))
        .await
        .expect("upsert through the indexer's embed-only key")
        .into_inner();
    assert_eq!((r.documents, r.failed.len()), (1, 0));
    // That service key can embed but cannot manage collections.
    let (c, msg) = code(
        i.create_collection(req(
            v1::CreateCollectionRequest { name: "c".into(), ..Default::default() },
            Some(&m.indexer_svc),
        ))
        .await,
    );
    assert_eq!(c, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("missing grant: manage on collection \"c\""), "{msg}");

    // ListCollections shows only what the caller may read.
    let names = |k: &str| {
        let mut i = i.clone();
        let k = k.to_string();
        async move {
            let r = i
                .list_collections(req(v1::ListCollectionsRequest {}, Some(&k)))
                .await
                .expect("list")
                .into_inner();
            r.collections.into_iter().map(|c| c.name).collect::<Vec<_>>()
        }
    };
    assert_eq!(names(&m.read_a).await, vec!["a"]);
    let mut all = names(&m.manage).await;
    all.sort();
    assert_eq!(all, vec!["a", "b"]);

    // Ask end to end: the generator retrieves with its read-only key.
    ask_finds_paris(ch.generator.clone(), "a", &m.manage).await;

    run_matrix(&m, &ch).await;

    // Metrics: over TLS, behind the metrics grant; per-principal counts, never a key.
    // (The metrics listener serves HTTP/1.1 and HTTP/2 whatever ALPN chose.)
    let h1 = tls.clone();
    let (status, _) = https_get(&metrics_addr, &h1, "/metrics", None).await;
    assert_eq!(status, 401);
    let (status, _) = https_get(&metrics_addr, &h1, "/metrics", Some(&m.read_a)).await;
    assert_eq!(status, 403);
    let (status, body) = https_get(&metrics_addr, &h1, "/metrics", Some(&m.metrics)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("ragd_embedder_auth_requests_total{principal=\"manager\",outcome=\"allowed\"}"),
        "{body}"
    );
    assert!(body.contains("principal=\"indexer-svc\""), "the indexer's own key is counted by name: {body}");

    // grpcurl (reflection stays open) with a CA and a bearer key, and without the key.
    let ca = m.arg("ca.pem");
    let auth = format!("authorization: Bearer {}", m.read_a);
    let out = std::process::Command::new(grpcurl())
        .args(["-cacert", &ca, "-H", &auth, "-d", "{}", indexer.addr(), "ragd.v1.Indexer/ListCollections"])
        .output()
        .expect("grpcurl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("\"name\": \"a\"") && !stdout.contains("\"name\": \"b\""),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(grpcurl())
        .args(["-cacert", &ca, "-d", "{}", indexer.addr(), "ragd.v1.Indexer/ListCollections"])
        .output()
        .expect("grpcurl");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));

    // openssl s_client: TLS 1.2 and 1.3 only.
    let connect = indexer.addr().to_string();
    let (ok, out) = openssl(&["s_client", "-connect", &connect, "-CAfile", &ca, "-brief", "-tls1_3"]);
    assert!(ok && out.contains("TLSv1.3"), "{out}");
    let (ok, out) = openssl(&["s_client", "-connect", &connect, "-CAfile", &ca, "-brief", "-tls1_2"]);
    assert!(ok && out.contains("TLSv1.2"), "{out}");
    let (ok, out) = openssl(&[
        "s_client",
        "-connect",
        &connect,
        "-CAfile",
        &ca,
        "-brief",
        "-tls1_1",
        "-cipher",
        "DEFAULT@SECLEVEL=0",
    ]);
    assert!(!ok, "a TLS 1.1 handshake succeeded: {out}");

    // Stop, then read every log: no key or token, at debug level.
    for mut p in [generator, indexer, embedder] {
        p.signal("TERM");
        let _ = p.wait(Duration::from_secs(60));
    }
    for log in ["embedder.log", "indexer.log", "generator.log"] {
        let text = std::fs::read_to_string(m.path(log)).expect("log");
        assert!(text.len() > 1000, "{log} is nearly empty: the scan would prove nothing\n{text}");
        for secret in m.secrets() {
            assert!(!text.contains(&secret), "{log} holds a credential");
        }
        assert!(!text.contains("panicked"), "{log}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_rotation_of_certificates_and_keys_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n);
    let a = |n: &str| p(n).display().to_string();
    let ca1 = Ca::new("ca one").expect("ca");
    let ca2 = Ca::new("ca two").expect("ca");
    let s1 = ca1.leaf("ragd", &["localhost", "127.0.0.1"]).expect("cert");
    let s2 = ca2.leaf("ragd", &["localhost", "127.0.0.1"]).expect("cert");
    let client = ca1.client("loadgen").expect("client");
    write(&p("ca1.pem"), &ca1.cert_pem).expect("write");
    write(&p("ca2.pem"), &ca2.cert_pem).expect("write");
    write(&p("server.pem"), &s1.cert_pem).expect("write");
    write(&p("server-key.pem"), &s1.key_pem).expect("write");
    write(&p("client.pem"), &client.cert_pem).expect("write");
    write(&p("client-key.pem"), &client.key_pem).expect("write");
    let (load_key, doomed_key) =
        (format!("ragd_load_{}", free_port()), format!("ragd_doomed_{}", free_port()));
    let keys = |with_doomed: bool| {
        let mut k = key_entry("load", &load_key, None, r#"{ service = "embed" }"#);
        if with_doomed {
            k += &key_entry("doomed", &doomed_key, None, r#"{ service = "embed" }"#);
        }
        k
    };
    write(&p("keys.toml"), &keys(true)).expect("write");
    let args = [
        "--tls-cert",
        &a("server.pem"),
        "--tls-key",
        &a("server-key.pem"),
        "--tls-client-ca",
        &a("ca1.pem"),
        "--auth-keys-file",
        &a("keys.toml"),
    ];
    let mut embedder = RagdProcess::serve("embedder", &args, &model_env());
    let addr = embedder.addr().to_string();
    let with_cert = tls_to(&p("ca1.pem"), Some((&p("client.pem"), &p("client-key.pem"))));
    wait_serving_tls(&addr, &with_cert, "ragd.v1.Embedder").await;

    // Mutual TLS: no client certificate, no call (and no TLS 1.2 handshake).
    let without = tls_to(&p("ca1.pem"), None);
    let r = async {
        let ch = ragd_core::client::connect_with(&format!("https://{addr}"), Some(without.clone()))
            .await
            .map_err(|e| e.to_string())?;
        HealthClient::new(ch).check(HealthCheckRequest::default()).await.map_err(|e| e.to_string())
    }
    .await;
    assert!(r.is_err(), "a client without a certificate was served");
    let (ok, out) = openssl(&["s_client", "-connect", &addr, "-CAfile", &a("ca1.pem"), "-brief", "-tls1_2"]);
    assert!(!ok, "handshake without a client certificate succeeded: {out}");
    let (ok, out) = openssl(&[
        "s_client",
        "-connect",
        &addr,
        "-CAfile",
        &a("ca1.pem"),
        "-cert",
        &a("client.pem"),
        "-key",
        &a("client-key.pem"),
        "-brief",
        "-tls1_2",
    ]);
    assert!(ok, "{out}");
    // grpcurl with the client certificate.
    let out = std::process::Command::new(grpcurl())
        .args(["-cacert", &a("ca1.pem"), "-cert", &a("client.pem"), "-key", &a("client-key.pem")])
        .args(["-H", &format!("api-key: {load_key}"), "-d", "{}", &addr, "ragd.v1.Embedder/ListModels"])
        .output()
        .expect("grpcurl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A load over one long-lived connection while everything rotates.
    let load_channel = channel(&addr, &with_cert).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_calls, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok_calls, failed, key) =
            (stop.clone(), ok_calls.clone(), failed.clone(), load_key.clone());
        tokio::spawn(async move {
            let mut e = EmbedderClient::new(load_channel);
            while !stop.load(Ordering::Relaxed) {
                match e
                    .embed(req(
                        v1::EmbedRequest { texts: vec!["rotation".into()], ..Default::default() },
                        Some(&key),
                    ))
                    .await
                {
                    Ok(_) => ok_calls.fetch_add(1, Ordering::Relaxed),
                    Err(s) => {
                        eprintln!("load call failed: {s:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        })
    };
    let mut e = EmbedderClient::new(channel(&addr, &with_cert).await);
    let embed_with =
        |k: &str| req(v1::EmbedRequest { texts: vec!["x".into()], ..Default::default() }, Some(k));
    e.embed(embed_with(&doomed_key)).await.expect("the doomed key works before rotation");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ok_calls.load(Ordering::Relaxed);

    // Rotate: the key is removed, the server certificate now comes from another CA.
    write(&p("keys.toml"), &keys(false)).expect("write");
    let removed = Instant::now();
    write(&p("server.pem"), &s2.cert_pem).expect("write");
    write(&p("server-key.pem"), &s2.key_pem).expect("write");
    loop {
        match e.embed(embed_with(&doomed_key)).await {
            Err(s) if s.code() == Code::Unauthenticated => break,
            _ => assert!(removed.elapsed() < Duration::from_secs(5), "the removed key is still accepted"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("removed key refused {:?} after the keys file changed", removed.elapsed());
    // New handshakes get the new certificate: trusted through CA two only.
    let with_ca2 = tls_to(&p("ca2.pem"), Some((&p("client.pem"), &p("client-key.pem"))));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = async {
            let ch = ragd_core::client::connect_with(&format!("https://{addr}"), Some(with_ca2.clone()))
                .await
                .ok()?;
            HealthClient::new(ch).check(HealthCheckRequest::default()).await.ok()
        }
        .await;
        if r.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "the rotated certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = ragd_core::client::connect_with(&format!("https://{addr}"), Some(with_cert.clone())).await;
    let old_ok = match old {
        Ok(ch) => HealthClient::new(ch).check(HealthCheckRequest::default()).await.is_ok(),
        Err(_) => false,
    };
    assert!(!old_ok, "a new handshake still got the old certificate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    let (done, lost) = (ok_calls.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("load: {done} calls, {lost} failed, {} after the rotation", done - before);
    assert_eq!(lost, 0, "in-flight calls failed during rotation");
    assert!(done > before, "the load stopped at the rotation");
    embedder.signal("TERM");
    let _ = embedder.wait(Duration::from_secs(30));
}

#[test]
fn bad_tls_material_and_missing_auth_stop_the_start_with_one_line_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n).display().to_string();
    let ca = Ca::new("ca").expect("ca");
    let good = ca.leaf("ragd", &["localhost"]).expect("cert");
    let other = ca.leaf("other", &["localhost"]).expect("cert");
    let expired = ca.leaf_valid("old", &["localhost"], 1_000_000_000, 1_100_000_000).expect("cert");
    write(&dir.path().join("cert.pem"), &good.cert_pem).expect("write");
    write(&dir.path().join("key.pem"), &good.key_pem).expect("write");
    write(&dir.path().join("other-key.pem"), &other.key_pem).expect("write");
    write(&dir.path().join("expired.pem"), &expired.cert_pem).expect("write");
    write(&dir.path().join("expired-key.pem"), &expired.key_pem).expect("write");
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "embedder", "--listen", "127.0.0.1:0", "--models-dir", "/nonexistent"];
        args.extend_from_slice(extra);
        ragd_cli(&args)
    };
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--tls-cert".into(), p("missing.pem"), "--tls-key".into(), p("key.pem")],
            "missing.pem: cannot read certificate".into(),
        ),
        (
            vec!["--tls-cert".into(), p("cert.pem"), "--tls-key".into(), p("other-key.pem")],
            "does not match the certificate".into(),
        ),
        (
            vec!["--tls-cert".into(), p("expired.pem"), "--tls-key".into(), p("expired-key.pem")],
            "expired.pem: certificate 1 expired at".into(),
        ),
        (vec!["--auth-keys-file".into(), p("nope.toml")], "nope.toml: cannot read keys file".into()),
        (vec!["--require-auth".into()], "--require-auth".into()),
    ];
    for (extra, want) in cases {
        let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (ok, _out, err) = serve(&refs);
        assert!(!ok, "{extra:?} started");
        assert!(err.contains(&want), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // Open without keys: one warning line, then on to loading the models (which fail here).
    let (ok, _out, err) = serve(&[]);
    assert!(!ok);
    assert_eq!(err.matches("no access control").count(), 1, "{err}");
}

/// `ragd up` on any free ports with its data in `data`, `extra` flags and RUST_LOG=warn; waits
/// until the three services are SERVING over TLS (trusting `ca`). Returns the process, the
/// `host:port` of each service by name, and the client TLS.
async fn up_tls(
    data: &Path,
    extra: &[&str],
    ca: &Path,
) -> (RagdProcess, impl Fn(&str) -> String + use<>, ClientTls) {
    let (dir, llm) = (data.display().to_string(), llm_model().display().to_string());
    let mut env = model_env();
    env.push(("RUST_LOG", "warn".into()));
    let mut args = vec![
        "--embedder-port",
        "0",
        "--indexer-port",
        "0",
        "--generator-port",
        "0",
        "--data-dir",
        &dir,
        "--llm-model",
        &llm,
    ];
    args.extend_from_slice(extra);
    let (up, urls) = RagdProcess::up(&args, &env);
    let tls = tls_to(ca, None);
    let addr = move |s: &str| urls[s].trim_start_matches("http://").to_string();
    for (s, name) in
        [("embedder", "ragd.v1.Embedder"), ("indexer", "ragd.v1.Indexer"), ("generator", "ragd.v1.Generator")]
    {
        wait_serving_tls(&addr(s), &tls, name).await;
    }
    (up, addr, tls)
}

fn sha256_hex(s: &str) -> String {
    // coreutils' sha256sum: an independent digest of what `ragd key new` printed.
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ragd_up_with_generated_certificates_keys_from_ragd_key_and_tokens_from_ragd_token() {
    let data = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| data.path().join(n).display().to_string();
    // `ragd key new`: the key on stdout, its keys-file entry on stderr, the digest of that key.
    let (ok, key_out, entry) = ragd_cli(&[
        "key", "new", "--name", "me", "--grant", "manage:*", "--grant", "embed", "--grant", "generate",
    ]);
    assert!(ok, "{entry}");
    let key = key_out.trim().to_string();
    assert!(key.starts_with("ragd_") && key.len() > 40, "{key}");
    assert!(entry.contains(&format!("sha256 = \"{}\"", sha256_hex(&key))), "{entry}");
    let toml: String = entry.lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n");
    write(&data.path().join("keys.toml"), &toml).expect("write");
    // `ragd token keygen`: the signing key stays here; the servers get the JWKS.
    let (ok, _, err) = ragd_cli(&["token", "keygen", "--out", &p("signer")]);
    assert!(ok, "{err}");

    let ca = data.path().join("tls/ca.pem");
    let (mut up, addr, tls) = up_tls(
        data.path(),
        &["--tls-generate", "--auth-keys-file", &p("keys.toml"), "--auth-jwks-file", &p("signer/jwks.json")],
        &ca,
    )
    .await;
    let mut i = IndexerClient::new(channel(&addr("indexer"), &tls).await);
    let (c, _) = code(i.list_collections(req(v1::ListCollectionsRequest {}, None)).await);
    assert_eq!(c, Code::Unauthenticated);
    i.create_collection(req(
        v1::CreateCollectionRequest { name: "notes".into(), ..Default::default() },
        Some(&key),
    ))
    .await
    .expect("create");
    // The indexer embeds and the generator retrieves with ragd up's own in-memory key.
    i.upsert_batch(req(
        v1::UpsertRequest { collection: "notes".into(), documents: vec![doc("paris")] },
        Some(&key),
    ))
    .await
    .expect("upsert");
    ask_finds_paris(channel(&addr("generator"), &tls).await, "notes", &key).await;

    // `ragd token mint`: a read-only token for notes.
    let (ok, token, err) = ragd_cli(&[
        "token",
        "mint",
        "--signing-key",
        &p("signer/signing-key.pem"),
        "--sub",
        "reader",
        "--grant",
        "read:notes",
        "--ttl",
        "600",
    ]);
    assert!(ok, "{err}");
    let token = token.trim().to_string();
    let search = || v1::SearchRequest {
        collection: "notes".into(),
        queries: vec![text_query("capital")],
        k: 1,
        ..Default::default()
    };
    i.search(req(search(), Some(&token))).await.expect("search with the token");
    let (c, msg) =
        code(i.drop_collection(req(v1::DropCollectionRequest { name: "notes".into() }, Some(&token))).await);
    assert_eq!(c, Code::PermissionDenied, "{msg}");

    // The CLI and loadgen over TLS with a credential from the environment.
    let out = std::process::Command::new(ragd_tests::process::ragd_bin())
        .args([
            "search",
            "--indexer",
            &format!("https://{}", addr("indexer")),
            "--collection",
            "notes",
            "--json",
        ])
        .args(["--upstream-tls-ca", &ca.display().to_string(), "capital of France"])
        .env("RAGD_API_KEY", &token)
        .output()
        .expect("ragd search");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("paris"));
    let out = std::process::Command::new(ragd_tests::process::loadgen_bin())
        .args(["search", "--endpoint", &format!("https://{}", addr("indexer")), "--collection", "notes"])
        .args(["--clients", "2", "--connections", "1", "--duration-secs", "1", "--warmup-secs", "0"])
        .args(["--upstream-tls-ca", &ca.display().to_string()])
        .env("RAGD_API_KEY", &token)
        .output()
        .expect("loadgen");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("loadgen report");
    assert!(report["requests_ok"].as_u64().unwrap_or(0) > 0 && report["requests_failed"] == 0, "{report}");

    up.signal("TERM");
    ragd_tests::process::assert_clean_stop(up.wait(Duration::from_secs(60)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_tls_on_every_hop_including_etcd_finds_itself_and_answers() {
    let m = material();
    let etcd = ragd_tests::etcd::Etcd::start_tls(ragd_tests::etcd::EtcdTls {
        ca: m.path("ca.pem"),
        cert: m.path("server.pem"),
        key: m.path("server-key.pem"),
        client_cert: m.path("client.pem"),
        client_key: m.path("client-key.pem"),
    })
    .await;
    let cluster = format!("tls{}", free_port());
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "--tls-cert",
            &m.arg("server.pem"),
            "--tls-key",
            &m.arg("server-key.pem"),
            "--tls-client-ca",
            &m.arg("ca.pem"),
            "--auth-keys-file",
            &m.arg("keys.toml"),
            "--upstream-tls-ca",
            &m.arg("ca.pem"),
            "--upstream-tls-cert",
            &m.arg("client.pem"),
            "--upstream-tls-key",
            &m.arg("client-key.pem"),
            "--etcd-endpoints",
            &etcd.endpoint,
            "--etcd-tls-ca",
            &m.arg("ca.pem"),
            "--etcd-tls-cert",
            &m.arg("client.pem"),
            "--etcd-tls-key",
            &m.arg("client-key.pem"),
            "--cluster",
            &cluster,
            "--lease-ttl-secs",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // Traces go to a collector over TLS too (the OTel spec's variables).
    let server_tls = ragd_core::tls::ServerTls::start(&ragd_core::tls::ServerTlsArgs {
        tls_cert: Some(m.path("server.pem")),
        tls_key: Some(m.path("server-key.pem")),
        tls_client_ca: None,
    })
    .expect("receiver tls")
    .expect("tls on");
    let otlp = ragd_tests::otlp_receiver::OtlpReceiver::start_tls(server_tls).await;
    let mut env = model_env();
    env.extend([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", m.arg("ca.pem")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
    ]);
    let spawn = |service: &str, extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        RagdProcess::serve(service, &refs, &env)
    };
    let data = tempfile::tempdir().expect("tempdir");
    let dir = data.path().display().to_string();
    let llm = llm_model().display().to_string();
    let embedder = spawn("embedder", &[]);
    // The indexer presents no key to the embedder: its client certificate is its credential.
    let indexer = spawn("indexer", &["--embedder-url", "etcd", "--data-dir", &dir]);
    let generator = spawn(
        "generator",
        &[
            "--indexer-url",
            "etcd",
            "--upstream-key-file",
            &m.arg("generator.key"),
            "--llm-model",
            &llm,
            "--llm-parallel",
            "1",
        ],
    );
    let tls = tls_to(&m.path("ca.pem"), Some((&m.path("client.pem"), &m.path("client-key.pem"))));
    for (p, s) in
        [(&embedder, "ragd.v1.Embedder"), (&indexer, "ragd.v1.Indexer"), (&generator, "ragd.v1.Generator")]
    {
        wait_serving_tls(p.addr(), &tls, s).await;
    }
    // Each registered an https:// address, over etcd's TLS.
    let deadline = Instant::now() + Duration::from_secs(30);
    let registered = loop {
        let r = etcd.list(&format!("/ragd/{cluster}/")).await;
        if r.len() == 3 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(registered.len(), 3, "{registered:?}");
    for (k, v) in &registered {
        assert!(v.contains("\"addr\":\"https://127.0.0.1:"), "{k}: {v}");
    }
    // Ingest (indexer → discovered embedder) and Ask (generator → discovered indexer), every hop
    // TLS with client certificates and each service's own key.
    let mut i = IndexerClient::new(channel(indexer.addr(), &tls).await);
    i.create_collection(req(
        v1::CreateCollectionRequest { name: "a".into(), ..Default::default() },
        Some(&m.manage),
    ))
    .await
    .expect("create");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = i
            .upsert_batch(req(
                v1::UpsertRequest { collection: "a".into(), documents: vec![doc("paris")] },
                Some(&m.manage),
            ))
            .await;
        match r {
            Ok(r) if r.get_ref().failed.is_empty() => break,
            // The indexer may not have seen the embedder's registration yet.
            other => assert!(Instant::now() < deadline, "upsert through the discovered embedder: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ask_finds_paris(channel(generator.addr(), &tls).await, "a", &m.manage).await;
    // The three services' spans reached the TLS collector.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let services: BTreeSet<String> = otlp.spans().into_iter().map(|s| s.service).collect();
        if ["ragd-embedder", "ragd-indexer", "ragd-generator"].iter().all(|s| services.contains(*s)) {
            break;
        }
        assert!(Instant::now() < deadline, "spans over TLS came only from {services:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for mut p in [generator, indexer, embedder] {
        p.signal("TERM");
        ragd_tests::process::assert_clean_stop(p.wait(Duration::from_secs(60)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matrix_through_ragd_up() {
    // The test's CA, server certificate and key carry ragd up's --tls-dir file names.
    let m = material();
    let data = tempfile::tempdir().expect("tempdir");
    let (tls_dir, keys, jwks) = (m.dir.path().display().to_string(), m.arg("keys.toml"), m.arg("jwks.json"));
    let (mut up, addr, tls) = up_tls(
        data.path(),
        &["--tls-dir", &tls_dir, "--auth-keys-file", &keys, "--auth-jwks-file", &jwks],
        &m.path("ca.pem"),
    )
    .await;
    let ch = Channels {
        embedder: channel(&addr("embedder"), &tls).await,
        indexer: channel(&addr("indexer"), &tls).await,
        generator: channel(&addr("generator"), &tls).await,
    };
    let mut i = IndexerClient::new(ch.indexer.clone());
    for name in ["a", "b"] {
        i.create_collection(req(
            v1::CreateCollectionRequest { name: name.into(), ..Default::default() },
            Some(&m.manage),
        ))
        .await
        .expect("create");
    }
    i.upsert_batch(req(
        v1::UpsertRequest { collection: "a".into(), documents: vec![doc("paris")] },
        Some(&m.manage),
    ))
    .await
    .expect("upsert");
    run_matrix(&m, &ch).await;
    up.signal("TERM");
    ragd_tests::process::assert_clean_stop(up.wait(Duration::from_secs(60)));
}
