//! The library's error type: every variant names the file, and the tensor
//! where there is one, so the CLI can print one line that says what is wrong
//! and where.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::codec::CodecError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not a readable safetensors file at all.
    #[error("{}: not a safetensors file: {reason}", path.display())]
    NotSafetensors { path: PathBuf, reason: String },
    /// A safetensors file that ecfloat did not write, given where a
    /// compressed one is needed.
    #[error("{}: not an ecfloat-compressed file (no ecf.format in its metadata); compress it with `ecf compress` first", path.display())]
    NotCompressed { path: PathBuf },
    /// A directory given where safetensors files are needed holds none.
    #[error("{}: no .safetensors files in this directory", path.display())]
    NoSafetensors { path: PathBuf },
    /// A tensor asked for by name that the file does not hold.
    #[error("{}: no tensor named {tensor:?}", path.display())]
    NoSuchTensor { path: PathBuf, tensor: String },
    #[error("{}: already compressed by ecfloat (format version {version})", path.display())]
    AlreadyCompressed { path: PathBuf, version: String },
    #[error("{}: format version {found:?} is not supported; this build reads versions {}", path.display(), crate::container::schema::readable_versions())]
    UnsupportedVersion { path: PathBuf, found: String },
    /// Metadata or planes that contradict each other.
    #[error("{}: {}{message}", path.display(), TensorPrefix(tensor))]
    Corrupt {
        path: PathBuf,
        tensor: Option<String>,
        message: String,
    },
    #[error("{}: {}{source}", path.display(), TensorPrefix(tensor))]
    Codec {
        path: PathBuf,
        tensor: Option<String>,
        source: CodecError,
    },
    #[error("{}: {}decoded bytes do not match the checksum recorded at compression (expected {expected:016x}, got {actual:016x})", path.display(), TensorPrefix(tensor))]
    ChecksumMismatch {
        path: PathBuf,
        tensor: Option<String>,
        expected: u64,
        actual: u64,
    },
    /// Valid input that ecfloat cannot handle.
    #[error("{}: {}{message}", path.display(), TensorPrefix(tensor))]
    Unsupported {
        path: PathBuf,
        tensor: Option<String>,
        message: String,
    },
    #[error("{}: refusing to overwrite an existing file (pass --force to replace it)", path.display())]
    OutputExists { path: PathBuf },
    #[error("{}: the output would replace the input", path.display())]
    OutputIsInput { path: PathBuf },
    /// `-o` names something ecfloat must not replace with a file.
    #[error("{}: is {kind}; ecf writes only regular files (choose another output)", path.display())]
    OutputNotAFile { path: PathBuf, kind: &'static str },
    /// The destination has less room than the output needs.
    #[error("{}: needs {needed} bytes but only {available} are free there", path.display())]
    InsufficientSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("{0}")]
    Usage(String),
    /// A request the backend cannot carry out: a handle of another
    /// backend, a range past a buffer's end, overlapping jobs.
    #[error("{backend}: {message}")]
    Backend { backend: String, message: String },
    /// The backend cannot be used here: no driver, device or library.
    #[error("{backend}: {reason}")]
    BackendUnavailable { backend: String, reason: String },
    #[error("{backend}: out of device memory: {message}")]
    OutOfDeviceMemory { backend: String, message: String },
    /// The device stopped working (reset, removed, or a fault in a kernel);
    /// nothing more runs on it.
    #[error("{backend}: the device was lost: {message}")]
    DeviceLost { backend: String, message: String },
    #[error("{backend}: the decode kernel does not compile: {message}")]
    KernelCompile { backend: String, message: String },
    /// Any other failure the driver reports.
    #[error("{backend}: driver error: {message}")]
    Driver { backend: String, message: String },
    /// Decode job `job`'s coded data is corrupt. Callers that know which
    /// tensor the job is turn this into [`Error::Codec`] with
    /// [`Error::in_tensor`].
    #[error("{backend}: decode job {job}: {source}")]
    CorruptJob {
        backend: String,
        job: usize,
        source: CodecError,
    },
}

struct TensorPrefix<'a>(&'a Option<String>);

impl fmt::Display for TensorPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(name) => write!(f, "tensor {name}: "),
            None => Ok(()),
        }
    }
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn corrupt(path: &Path, tensor: Option<&str>, message: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.to_path_buf(),
            tensor: tensor.map(str::to_string),
            message: message.into(),
        }
    }

    pub fn codec(path: &Path, tensor: &str, source: CodecError) -> Self {
        Error::Codec {
            path: path.to_path_buf(),
            tensor: Some(tensor.to_string()),
            source,
        }
    }

    /// Names the file and tensor an operation on a device was about: a job
    /// that found its data corrupt becomes [`Error::Codec`]; a device's or
    /// backend's error keeps its kind and gains the names in its message.
    pub fn in_tensor(self, path: &Path, tensor: &str) -> Self {
        let named = |message: String| format!("{}: tensor {tensor}: {message}", path.display());
        match self {
            Error::CorruptJob { source, .. } => Error::codec(path, tensor, source),
            Error::Backend { backend, message } => Error::Backend {
                backend,
                message: named(message),
            },
            Error::OutOfDeviceMemory { backend, message } => Error::OutOfDeviceMemory {
                backend,
                message: named(message),
            },
            Error::DeviceLost { backend, message } => Error::DeviceLost {
                backend,
                message: named(message),
            },
            Error::Driver { backend, message } => Error::Driver {
                backend,
                message: named(message),
            },
            other => other,
        }
    }

    /// Whether the error is the device's or the driver's, not the data's.
    pub fn is_device_error(&self) -> bool {
        matches!(
            self,
            Error::BackendUnavailable { .. }
                | Error::OutOfDeviceMemory { .. }
                | Error::DeviceLost { .. }
                | Error::KernelCompile { .. }
                | Error::Driver { .. }
        )
    }
}
