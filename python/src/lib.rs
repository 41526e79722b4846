//! `ecfloat._ecfloat`: what the Python package (`python/ecfloat/`) builds
//! on. A [`Checkpoint`] reads a compressed file, a compressed checkpoint
//! directory, or plain safetensors, and decodes one tensor at a time into
//! memory the caller allocated (a torch tensor or a NumPy array), without
//! the GIL: host memory, or device memory on a GPU, where the CUDA backend
//! decodes on the caller's stream (torch's current one). `compress`,
//! `decompress` and `verify` run the CLI's commands and return their JSON
//! reports.
//!
//! Errors become Python exceptions carrying the CLI's message: `OSError`
//! for I/O, `DeviceError` (a `RuntimeError`) for a device, `ValueError`
//! for everything a file or an argument gets wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ecfloat::backend::cuda::CudaBackend;
use ecfloat::container::source::TensorEntry;
use ecfloat::container::{self, CompressedFile, Progress, SourceFile, Storage};
use ecfloat::{Error, backend, tools};
use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    _ecfloat,
    DeviceError,
    PyRuntimeError,
    "A decode device (a GPU backend) is unavailable or failed."
);

mod coded;
mod commands;

/// The crate's error as the Python exception that fits it.
pub(crate) fn python_error(error: Error) -> PyErr {
    let message = error.to_string();
    exception_of(&error, message)
}

/// The crate's error as the Python exception that fits it, saying what
/// was being done: "decoding block model.layers.3: …".
pub(crate) fn python_error_in(error: Error, doing: &str) -> PyErr {
    let message = format!("{doing}: {error}");
    exception_of(&error, message)
}

fn exception_of(error: &Error, message: String) -> PyErr {
    match error {
        Error::Io { .. } => PyOSError::new_err(message),
        Error::Backend { .. }
        | Error::BackendUnavailable { .. }
        | Error::OutOfDeviceMemory { .. }
        | Error::DeviceLost { .. }
        | Error::KernelCompile { .. }
        | Error::Driver { .. } => DeviceError::new_err(message),
        _ => PyValueError::new_err(message),
    }
}

/// One file of a checkpoint.
enum Shard {
    Compressed(CompressedFile),
    /// A plain safetensors file and its tensors, by name.
    Plain(SourceFile, HashMap<String, TensorEntry>),
}

impl Shard {
    fn open(path: &Path) -> Result<Self, Error> {
        let file = SourceFile::open(path)?;
        Ok(match file.ecf_version() {
            Some(_) => Shard::Compressed(CompressedFile::from_source(file)?),
            None => {
                let entries = file.tensors().into_iter().map(|t| (t.name.clone(), t));
                let entries = entries.collect();
                Shard::Plain(file, entries)
            }
        })
    }

    /// (name, dtype, shape) of every tensor, in data order.
    fn tensors(&self) -> Vec<(String, safetensors::Dtype, Vec<usize>)> {
        let entries = match self {
            Shard::Compressed(file) => file.tensors.iter().map(|t| t.source.clone()).collect(),
            Shard::Plain(file, _) => file.tensors(),
        };
        entries
            .into_iter()
            .map(|t| (t.name, t.dtype, t.shape))
            .collect()
    }

    fn metadata(&self) -> Option<&HashMap<String, String>> {
        match self {
            Shard::Compressed(file) => file.source_metadata.metadata().as_ref(),
            Shard::Plain(file, _) => file.metadata.metadata().as_ref(),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Shard::Compressed(file) => file.path(),
            Shard::Plain(file, _) => &file.path,
        }
    }

    /// Writes tensor `name`'s original bytes into `out`, which must hold
    /// exactly them; a coded tensor is decoded and checked against its
    /// checksum. The tensor's mapped pages then leave this process's
    /// memory, so reading a checkpoint once holds one tensor at a time.
    fn read_into(&self, name: &str, out: &mut [u8]) -> Result<(), Error> {
        match self {
            Shard::Plain(file, entries) => {
                let entry = plain_entry(file, entries, name)?;
                let read = copy_exactly(&file.data()[entry.range.clone()], out, &file.path, name);
                file.release(entry.range);
                read
            }
            Shard::Compressed(file) => {
                let tensor = file.tensor(name)?;
                let decode = container::cpu_decoder();
                let read = file.read_tensor_into(tensor, &decode, out);
                file.release(tensor);
                read
            }
        }
    }
}

/// Tensor `name` of a plain safetensors file.
fn plain_entry(
    file: &SourceFile,
    entries: &HashMap<String, TensorEntry>,
    name: &str,
) -> Result<TensorEntry, Error> {
    entries
        .get(name)
        .cloned()
        .ok_or_else(|| Error::NoSuchTensor {
            path: file.path.clone(),
            tensor: name.to_string(),
        })
}

fn copy_exactly(bytes: &[u8], out: &mut [u8], path: &Path, name: &str) -> Result<(), Error> {
    if bytes.len() != out.len() {
        return Err(Error::Usage(format!(
            "{}: tensor {name} is {} bytes, not the {} of the buffer given",
            path.display(),
            bytes.len(),
            out.len()
        )));
    }
    out.copy_from_slice(bytes);
    Ok(())
}

/// A safetensors checkpoint, compressed or not: a file, or a directory of
/// shards.
#[pyclass(frozen, module = "ecfloat._ecfloat")]
struct Checkpoint {
    shards: Vec<Shard>,
    /// Every tensor: (name, dtype, shape, shard), in file and data order.
    tensors: Vec<(String, safetensors::Dtype, Vec<usize>, usize)>,
    by_name: HashMap<String, usize>,
}

impl Checkpoint {
    fn open(path: &Path) -> Result<Self, Error> {
        let paths = if path.is_dir() {
            container::safetensors_files(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let mut shards = Vec::with_capacity(paths.len());
        let mut tensors = Vec::new();
        let mut by_name = HashMap::new();
        for path in &paths {
            let shard = Shard::open(path)?;
            for (name, dtype, shape) in shard.tensors() {
                if by_name.insert(name.clone(), tensors.len()).is_some() {
                    return Err(Error::corrupt(
                        path,
                        Some(&name),
                        "the tensor is also in another shard of the checkpoint".to_string(),
                    ));
                }
                tensors.push((name, dtype, shape, shards.len()));
            }
            shards.push(shard);
        }
        Ok(Checkpoint {
            shards,
            tensors,
            by_name,
        })
    }

    fn entry(&self, name: &str) -> PyResult<&(String, safetensors::Dtype, Vec<usize>, usize)> {
        self.by_name
            .get(name)
            .map(|&index| &self.tensors[index])
            .ok_or_else(|| {
                pyo3::exceptions::PyKeyError::new_err(format!("no tensor named {name:?}"))
            })
    }
}

#[pymethods]
impl Checkpoint {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        py.detach(|| Checkpoint::open(&path)).map_err(python_error)
    }

    /// Tensor names, sorted, as safetensors lists them.
    fn keys(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors.iter().map(|t| t.0.clone()).collect();
        names.sort();
        names
    }

    /// Tensor names in the order of their data in the original files.
    fn keys_in_data_order(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.0.clone()).collect()
    }

    /// The first file's `__metadata__`, as the original file had it.
    fn metadata(&self) -> Option<HashMap<String, String>> {
        self.shards.first().and_then(|s| s.metadata().cloned())
    }

    /// (dtype, shape, bytes) of tensor `name`; dtype as safetensors names
    /// it (`"BF16"`).
    fn info(&self, name: &str) -> PyResult<(String, Vec<usize>, usize)> {
        let (_, dtype, shape, _) = self.entry(name)?;
        let bytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
        Ok((format!("{dtype:?}"), shape.clone(), bytes))
    }

    /// Writes tensor `name`'s bytes to the `length` bytes of host memory at
    /// `address`, which the caller allocated and keeps alive; the GIL is
    /// released meanwhile.
    fn read_into(&self, py: Python<'_>, name: &str, address: usize, length: usize) -> PyResult<()> {
        let (_, _, _, shard) = self.entry(name)?;
        if length == 0 {
            return py
                .detach(|| self.shards[*shard].read_into(name, &mut []))
                .map_err(python_error);
        }
        if address == 0 {
            return Err(PyValueError::new_err("read_into: a null address"));
        }
        py.detach(|| {
            // Safety: the caller (ecfloat's own Python code) passes the
            // address and size of a buffer it allocated for this tensor
            // and holds while this runs.
            let out = unsafe { std::slice::from_raw_parts_mut(address as *mut u8, length) };
            self.shards[*shard].read_into(name, out)
        })
        .map_err(python_error)
    }

    /// The tensors of `groups`, a list of `(block name, tensor names)`,
    /// kept coded: in host memory, or with `cuda=(device, stream)` on that
    /// GPU, decoding on that stream (a `CUstream` address). Each tensor is
    /// checked once here; the file's pages leave memory as it goes.
    #[pyo3(signature = (groups, cuda=None))]
    fn keep_coded(
        &self,
        py: Python<'_>,
        groups: Vec<(String, Vec<String>)>,
        cuda: Option<(usize, usize)>,
    ) -> PyResult<coded::CodedWeights> {
        coded::CodedWeights::keep(self, py, groups, cuda)
    }

    /// Decodes tensor `name` on GPU `device`, on `stream` (the address of a
    /// `CUstream`: torch's current stream), into the `length` bytes of
    /// device memory at `address`, which the caller allocated there and
    /// keeps alive: the tensor's bytes rounded up to whole words. The
    /// decoded bytes never pass through the host; the GIL is released.
    fn read_into_cuda(
        &self,
        py: Python<'_>,
        name: &str,
        device: usize,
        stream: usize,
        address: u64,
        length: u64,
    ) -> PyResult<()> {
        let (_, _, _, shard) = self.entry(name)?;
        if address == 0 {
            return Err(PyValueError::new_err("read_into_cuda: a null address"));
        }
        py.detach(|| {
            let backend = cuda_backend(device, stream)?;
            self.shards[*shard].decode_on_device(&backend, name, address, length)
        })
        .map_err(python_error)
    }
}

/// The CUDA backend on GPU `device`'s stream `stream`: kept for the next
/// tensors, as making one loads the decode kernel into the device.
///
/// Each backend holds a retain of the device's primary context, a loaded
/// kernel module and pooled launch buffers, and a program may decode on
/// any number of streams (`torch.cuda.Stream()`, `ExternalStream`), so
/// only the [`CACHED_BACKENDS`] pairs used most recently keep theirs. That
/// bound, rather than dropping a backend when its stream goes away, is
/// because nothing says when a stream goes: CUDA cannot tell a destroyed
/// stream handle from a live one, and torch keeps pooled streams after
/// the Python object is gone. Dropping a backend does not touch its
/// stream, so an evicted backend whose stream was destroyed goes cleanly;
/// one still decoding on another thread goes when that decode returns.
fn cuda_backend(device: usize, stream: usize) -> Result<Arc<CudaBackend>, Error> {
    static BACKENDS: Mutex<Lru<(usize, usize), Arc<CudaBackend>>> =
        Mutex::new(Lru::new(CACHED_BACKENDS));
    let mut backends = BACKENDS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(backend) = backends.get(&(device, stream)) {
        return Ok(backend.clone());
    }
    // Safety: the caller passes torch's current stream of that device,
    // which torch keeps alive while it decodes on it.
    let backend = Arc::new(unsafe { CudaBackend::on_borrowed_stream(device, stream as _) }?);
    let evicted = backends.insert((device, stream), backend.clone());
    // A backend waits for its last decode as it goes: not under the lock.
    drop(backends);
    drop(evicted);
    Ok(backend)
}

/// Backends kept at most: more than the streams a program usually decodes
/// on at once, few enough that each one's context retain, kernel module
/// and buffers stay bounded.
const CACHED_BACKENDS: usize = 8;

/// A cache of at most `capacity` values that drops the least recently
/// used; linear, for the handful of entries it keeps.
struct Lru<K, V> {
    /// Least recently used first.
    entries: Vec<(K, V)>,
    capacity: usize,
}

impl<K: PartialEq, V> Lru<K, V> {
    const fn new(capacity: usize) -> Self {
        Lru {
            entries: Vec::new(),
            capacity,
        }
    }

    /// The value of `key`, now the most recently used.
    fn get(&mut self, key: &K) -> Option<&V> {
        let index = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(index);
        self.entries.push(entry);
        self.entries.last().map(|(_, value)| value)
    }

    /// Keeps `value` for `key` (absent) as the most recently used, and
    /// returns the value it pushes out, for the caller to drop.
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        let evicted =
            (self.entries.len() >= self.capacity.max(1)).then(|| self.entries.remove(0).1);
        self.entries.push((key, value));
        evicted
    }
}

impl Shard {
    /// Decodes tensor `name` on `backend` into `length` bytes of its
    /// device's memory at `address`; a tensor stored raw is copied there.
    fn decode_on_device(
        &self,
        backend: &CudaBackend,
        name: &str,
        address: u64,
        length: u64,
    ) -> Result<(), Error> {
        use ecfloat::backend::Backend;
        let uploaded = match self {
            Shard::Plain(file, entries) => {
                let entry = plain_entry(file, entries, name)?;
                let uploaded = backend.upload_raw(&file.data()[entry.range.clone()]);
                file.release(entry.range);
                uploaded?
            }
            Shard::Compressed(file) => {
                let tensor = file.tensor(name)?;
                let uploaded = match &tensor.storage {
                    Storage::Raw => backend.upload_raw(file.stored_bytes(tensor)),
                    Storage::Coded(coded) => file
                        .block_index(name, coded)
                        .and_then(|index| backend.upload(&file.view(coded), &index))
                        .map_err(|e| e.in_tensor(file.path(), name)),
                };
                file.release(tensor);
                uploaded?
            }
        };
        // Safety: the caller passes memory torch allocated for this tensor
        // on that device, which it holds while this runs.
        unsafe { backend.decode_into_borrowed(uploaded.as_ref(), address, length) }
            .map_err(|e| e.in_tensor(self.path(), name))
    }
}

/// Whether `path` is a file `ecf compress` wrote (a safetensors file whose
/// metadata names the ecfloat format), by its header alone.
#[pyfunction]
fn is_compressed(py: Python<'_>, path: PathBuf) -> PyResult<bool> {
    let file = py
        .detach(|| SourceFile::open(&path))
        .map_err(python_error)?;
    Ok(file.ecf_version().is_some())
}

/// A command's report as the JSON the CLI prints with `--json`.
pub(crate) fn json_report(report: &impl serde::Serialize) -> PyResult<String> {
    serde_json::to_string(report)
        .map_err(|e| PyRuntimeError::new_err(format!("the report does not serialise: {e}")))
}

/// `ecf compress`: `source` (a file or a directory) to `output`, or beside
/// it; returns its JSON report.
#[pyfunction]
#[pyo3(signature = (source, output=None, force=false))]
fn compress(
    py: Python<'_>,
    source: PathBuf,
    output: Option<PathBuf>,
    force: bool,
) -> PyResult<String> {
    let summary = py
        .detach(|| {
            tools::compress::compress(&source, output.as_deref(), force, Progress::default())
        })
        .map_err(python_error)?;
    json_report(&summary)
}

/// `ecf decompress`: `source` back to `output`, or beside it, every byte
/// checked; returns its JSON report.
#[pyfunction]
#[pyo3(signature = (source, output=None, force=false))]
fn decompress(
    py: Python<'_>,
    source: PathBuf,
    output: Option<PathBuf>,
    force: bool,
) -> PyResult<String> {
    let summary = py
        .detach(|| {
            tools::decompress::decompress(&source, output.as_deref(), force, &Progress::default())
        })
        .map_err(python_error)?;
    json_report(&summary)
}

/// `ecf verify`: decodes everything in `path` on `backend` and checks every
/// checksum; returns its JSON report (a failed check is in the report).
#[pyfunction]
#[pyo3(signature = (path, backend="cpu"))]
fn verify(py: Python<'_>, path: PathBuf, backend: &str) -> PyResult<String> {
    let report = py
        .detach(|| {
            let backend = backend::open(backend)?;
            tools::verify::verify(&path, backend.as_ref(), &Progress::default())
        })
        .map_err(python_error)?;
    json_report(&report)
}

#[pymodule]
fn _ecfloat(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Checkpoint>()?;
    module.add_class::<coded::CodedWeights>()?;
    module.add_class::<coded::BlockDecode>()?;
    module.add_function(wrap_pyfunction!(coded::layer_block, module)?)?;
    module.add_function(wrap_pyfunction!(is_compressed, module)?)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    commands::register(module)?;
    module.add_function(wrap_pyfunction!(compress, module)?)?;
    module.add_function(wrap_pyfunction!(decompress, module)?)?;
    module.add_function(wrap_pyfunction!(verify, module)?)?;
    module.add("DeviceError", module.py().get_type::<DeviceError>())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_backend_cache_drops_the_least_recently_used_pair() {
        let mut cache = Lru::new(2);
        assert_eq!(cache.insert((0, 1), "a"), None);
        assert_eq!(cache.insert((0, 2), "b"), None);
        assert_eq!(cache.get(&(0, 1)), Some(&"a"));
        // (0, 2) is now the least recently used.
        assert_eq!(cache.insert((0, 3), "c"), Some("b"));
        assert_eq!(cache.get(&(0, 2)), None);
        assert_eq!(cache.get(&(0, 1)), Some(&"a"));
        assert_eq!(cache.get(&(0, 3)), Some(&"c"));
        // Many short-lived streams keep at most two backends.
        for stream in 4..100 {
            cache.insert((0, stream), "short-lived");
            assert!(cache.entries.len() <= 2);
        }
    }
}
