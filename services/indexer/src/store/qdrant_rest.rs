//! The two snapshot calls Qdrant offers over REST only: downloading a collection snapshot
//! (`GET /collections/{c}/snapshots/{name}`) and recovering a collection from an uploaded one
//! (`POST /collections/{c}/snapshots/upload`, multipart field `snapshot`). Files move in 1 MiB
//! pieces, read and written on the blocking pool, so a snapshot of any size neither sits in
//! memory nor blocks an async worker.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::error::IndexError;

/// Bytes per piece of a download or upload.
const PIECE: usize = 1 << 20;

/// A multipart boundary of 32 random hex digits: a snapshot that happens to hold it (which
/// would cut the upload short) is out of reach.
fn boundary() -> String {
    use std::hash::{BuildHasher, Hasher};
    let random = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        h.finish()
    };
    format!("ragd-snapshot-{:016x}{:016x}", random(1), random(2))
}

/// Where the REST API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Rest {
    pub base: String,
    pub api_key: Option<String>,
    pub http: reqwest::Client,
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> IndexError {
    IndexError::StoreUnavailable(format!("qdrant REST {what}: {e}"))
}

/// A REST answer that is not a success, as an indexer error with Qdrant's own message.
async fn refused(what: &str, response: reqwest::Response) -> IndexError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    // Qdrant answers {"status": {"error": "..."}}; anything else is quoted as it came.
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["status"]["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| ragd_core::status::quote(&body));
    let message = format!("qdrant REST {what}: HTTP {status}: {message}");
    match status.as_u16() {
        404 => IndexError::Remote(tonic::Status::not_found(message)),
        409 => IndexError::Remote(tonic::Status::already_exists(message)),
        400 | 422 => IndexError::Remote(tonic::Status::failed_precondition(message)),
        401 => IndexError::Remote(tonic::Status::unauthenticated(message)),
        403 => IndexError::Remote(tonic::Status::permission_denied(message)),
        429 => IndexError::Remote(tonic::Status::resource_exhausted(message)),
        _ => IndexError::StoreUnavailable(message),
    }
}

impl Rest {
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.api_key {
            Some(key) => r.header("api-key", key),
            None => r,
        }
    }

    /// Downloads snapshot `name` of Qdrant collection `collection` into `to` (created); returns
    /// its size. `expected` (the size CreateSnapshot reported) is checked.
    pub async fn download(
        &self,
        collection: &str,
        name: &str,
        expected: Option<u64>,
        to: &Path,
    ) -> Result<u64, IndexError> {
        let what = "snapshot download";
        let url = format!("{}/collections/{collection}/snapshots/{name}", self.base);
        let response =
            self.request(reqwest::Method::GET, &url).send().await.map_err(|e| unavailable(what, e))?;
        if !response.status().is_success() {
            return Err(refused(what, response).await);
        }
        let path = to.to_path_buf();
        let mut file =
            Some(on_blocking(move || std::fs::File::create_new(&path).map_err(|e| io_err(&path, e))).await?);
        let mut stream = response.bytes_stream();
        let mut written = 0u64;
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| unavailable(what, e))?;
            written += piece.len() as u64;
            let (mut f, path) = (file.take().expect("file is put back after each write"), to.to_path_buf());
            file = Some(
                on_blocking(move || {
                    f.write_all(&piece).map_err(|e| io_err(&path, e))?;
                    Ok(f)
                })
                .await?,
            );
        }
        let (f, path) = (file.take().expect("file"), to.to_path_buf());
        on_blocking(move || f.sync_all().map_err(|e| io_err(&path, e))).await?;
        if let Some(size) = expected.filter(|&s| s != written) {
            return Err(IndexError::Store(format!(
                "qdrant snapshot {name} of {collection}: downloaded {written} bytes, qdrant reported {size}"
            )));
        }
        Ok(written)
    }

    /// Creates Qdrant collection `collection` from the snapshot file `from` (Qdrant's recover
    /// from an upload, waiting until it is done).
    pub async fn upload(&self, collection: &str, from: &Path) -> Result<(), IndexError> {
        let what = "snapshot upload";
        let path = from.to_path_buf();
        let (file, len) = on_blocking(move || {
            let f = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
            let len = f.metadata().map_err(|e| io_err(&path, e))?.len();
            Ok((f, len))
        })
        .await?;
        let boundary = boundary();
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"snapshot\"; filename=\"ragd.snapshot\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{boundary}--\r\n");
        let length = head.len() as u64 + len + tail.len() as u64;
        let body = futures::stream::once(async move { Ok::<_, IndexError>(head.into_bytes()) })
            .chain(file_pieces(file, from.to_path_buf()))
            .chain(futures::stream::once(async move { Ok(tail.into_bytes()) }));
        let url =
            format!("{}/collections/{collection}/snapshots/upload?wait=true&priority=snapshot", self.base);
        let response = self
            .request(reqwest::Method::POST, &url)
            .header(reqwest::header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .header(reqwest::header::CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await
            .map_err(|e| unavailable(what, e))?;
        if !response.status().is_success() {
            return Err(refused(what, response).await);
        }
        Ok(())
    }
}

/// The file's bytes in pieces, each read on the blocking pool.
fn file_pieces(
    file: std::fs::File,
    path: PathBuf,
) -> impl futures::Stream<Item = Result<Vec<u8>, IndexError>> + Send + 'static {
    futures::stream::try_unfold(Some((file, path)), |state| async move {
        let Some((mut f, path)) = state else { return Ok(None) };
        let (f, path, piece) = on_blocking(move || {
            let mut buf = vec![0u8; PIECE];
            let n = f.read(&mut buf).map_err(|e| io_err(&path, e))?;
            buf.truncate(n);
            Ok((f, path, buf))
        })
        .await?;
        if piece.is_empty() {
            return Ok(None);
        }
        Ok(Some((piece, Some((f, path)))))
    })
}

fn io_err(path: &Path, e: std::io::Error) -> IndexError {
    IndexError::Store(format!("{}: {e}", path.display()))
}

async fn on_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, IndexError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| IndexError::Store(format!("snapshot file task: {e}")))?
}
