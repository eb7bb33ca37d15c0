//! ONNX Runtime backend: the process-wide environment (the shared library is loaded explicitly
//! with `ort::init_from`, never lazily) and one session per model per worker, on CPU or on
//! CUDA through ONNX Runtime's CUDA execution provider (cargo feature `cuda`).

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;

use crate::config::Device;
use crate::error::EmbedError;
use crate::manifest::{ModelSpec, Pooling};
use crate::model::{Backend, PaddedBatch, pool};

/// ONNX Runtime allows one environment per process; every embedder in the process shares it.
static ENVIRONMENT: OnceLock<Mutex<Option<(PathBuf, Environment)>>> = OnceLock::new();

/// Loads ONNX Runtime from `library` (once per process) and returns the environment.
/// A second call with another library path is an error: a process cannot switch runtimes.
pub fn environment(library: &Path) -> Result<Environment, EmbedError> {
    let slot = ENVIRONMENT.get_or_init(|| Mutex::new(None));
    let mut slot = slot.lock().map_err(|_| EmbedError::Runtime("environment lock poisoned".into()))?;
    if let Some((loaded, env)) = slot.as_ref() {
        if loaded != library {
            return Err(EmbedError::Runtime(format!(
                "ONNX Runtime is already loaded from {}; cannot load {} too",
                loaded.display(),
                library.display()
            )));
        }
        return Ok(env.clone());
    }
    if !library.is_file() {
        return Err(EmbedError::Runtime(format!(
            "ONNX Runtime library {} not found (run scripts/setup, or set RAGD_ORT_LIBRARY)",
            library.display()
        )));
    }
    let env = ort::init_from(library)
        .map_err(|e| EmbedError::Runtime(format!("cannot load {}: {e}", library.display())))?
        .with_name("ragd-embedder")
        .with_telemetry(false)
        .build()
        .map_err(|e| EmbedError::Runtime(e.to_string()))?;
    tracing::info!(library = %library.display(), "ONNX Runtime loaded");
    *slot = Some((library.to_path_buf(), env.clone()));
    Ok(env)
}

/// An ONNX Runtime session of one model.
pub struct OrtBackend {
    session: Session,
    dim: usize,
    pooling: Pooling,
}

impl std::fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtBackend").field("dim", &self.dim).field("pooling", &self.pooling).finish()
    }
}

impl OrtBackend {
    /// Creates a session for `spec` on `device` with `intra_threads` (0 = ONNX Runtime's default).
    pub fn new(
        env: &Environment,
        spec: &ModelSpec,
        device: Device,
        intra_threads: usize,
    ) -> Result<Self, EmbedError> {
        let rt = |e: ort::Error<ort::session::builder::SessionBuilder>| EmbedError::Runtime(e.to_string());
        let mut builder = Session::builder(env)
            .map_err(|e| EmbedError::Runtime(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(rt)?
            .with_inter_threads(1)
            .map_err(rt)?
            // Spinning threads steal the cores that tokenisation and gRPC need under load.
            .with_intra_op_spinning(false)
            .map_err(rt)?;
        if intra_threads > 0 {
            builder = builder.with_intra_threads(intra_threads).map_err(rt)?;
        }
        if !spec.disabled_optimizers.is_empty() {
            builder = builder
                .with_config_entry(
                    "optimization.disable_specified_optimizers",
                    spec.disabled_optimizers.join(","),
                )
                .map_err(rt)?;
        }
        builder = with_device(builder, device)?;
        let session = builder
            .commit_from_file(&spec.model)
            .map_err(|e| EmbedError::Runtime(format!("cannot load model {}: {e}", spec.model.display())))?;
        Ok(Self { session, dim: spec.dim, pooling: spec.pooling })
    }
}

#[cfg(feature = "cuda")]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder, EmbedError> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda(id) => builder
            .with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(id)
                .build()
                .error_on_failure()])
            .map_err(|e| {
                EmbedError::Device(format!(
                    "CUDA execution provider unavailable on cuda:{id}: {e} (needs onnxruntime-gpu 1.31 \
                     with CUDA 13 and cuDNN 9 libraries on the library path, and a GPU)"
                ))
            }),
    }
}

#[cfg(not(feature = "cuda"))]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder, EmbedError> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda(_) => Err(EmbedError::Device(format!(
            "{device} requested but ragd was built without the `cuda` feature \
             (rebuild with `cargo build --features cuda`)"
        ))),
    }
}

impl Backend for OrtBackend {
    fn embed(&mut self, batch: &PaddedBatch) -> Result<Vec<Vec<f32>>, EmbedError> {
        if batch.batch() == 0 {
            return Ok(Vec::new());
        }
        let rt = |e: ort::Error| EmbedError::Runtime(e.to_string());
        let shape = [batch.batch(), batch.seq];
        let ids = TensorRef::from_array_view((shape, batch.input_ids.as_slice())).map_err(rt)?;
        let mask = TensorRef::from_array_view((shape, batch.attention_mask.as_slice())).map_err(rt)?;
        let outputs =
            self.session.run(ort::inputs!["input_ids" => ids, "attention_mask" => mask]).map_err(rt)?;
        let (out_shape, hidden) = outputs["last_hidden_state"].try_extract_tensor::<f32>().map_err(rt)?;
        let expected = [batch.batch() as i64, batch.seq as i64, self.dim as i64];
        if **out_shape != expected {
            return Err(EmbedError::Runtime(format!(
                "model output shape {:?}, expected {expected:?}",
                &**out_shape
            )));
        }
        Ok(pool(hidden, &batch.lens, batch.seq, self.dim, self.pooling))
    }
}
