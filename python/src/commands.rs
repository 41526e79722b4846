//! The rest of what `python -m ecfloat` and `ecfloat.torch.save_file` need
//! from the library: `ecf inspect`'s report, writing a compressed file
//! from tensors held in memory, and the CLI's `--threads`.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ecfloat::container::schema;
use ecfloat::container::write::{TensorData, write_safetensors};
use ecfloat::container::{CompressOptions, Progress};
use ecfloat::{Error, tools};
use pyo3::prelude::*;
use safetensors::Dtype;

/// `ecf inspect`: per-tensor dtype, shape, exponent entropy, bits per
/// element and the bound, of a compressed or plain file or of every file
/// of a directory; returns its JSON report.
#[pyfunction]
fn inspect(py: Python<'_>, path: PathBuf) -> PyResult<String> {
    let inspection = py
        .detach(|| tools::inspect::inspect(&path))
        .map_err(crate::python_error)?;
    crate::json_report(&inspection)
}

/// `ecf --threads N`: the number of worker threads for encoding and CPU
/// decoding. Takes effect only before the first command of the process
/// uses them; a later call is a `ValueError`.
#[pyfunction]
fn use_threads(py: Python<'_>, threads: usize) -> PyResult<()> {
    py.detach(|| tools::use_threads(threads))
        .map_err(crate::python_error)
}

/// `ecf docs NAME`: the text of a document the binary carries (`json`,
/// `format`).
#[pyfunction]
fn document(name: &str) -> PyResult<&'static str> {
    tools::document(name).map_err(crate::python_error)
}

/// A tensor as `save_file` receives it: (name, dtype as safetensors names
/// it, shape, address, length) of host memory the caller holds.
type TensorSpec = (String, String, Vec<usize>, usize, usize);

/// A tensor checked to be one safetensors can store, its bytes still where
/// the caller keeps them.
struct CheckedTensor {
    name: String,
    dtype: Dtype,
    /// As the header spells it.
    dtype_name: String,
    shape: Vec<u64>,
    address: usize,
    length: usize,
}

/// Writes `tensors` to `path` as a compressed file, as if saved with
/// `safetensors.torch.save_file` and then compressed with `ecf compress`:
/// decompressing it gives the safetensors file those tensors make, with
/// the tensors in safetensors' order (by dtype, widest first, then by
/// name) and `metadata` in the header. Each tensor is (name, dtype as
/// safetensors names it, shape, address, length) of host memory that the
/// caller allocated and keeps alive while this runs; the GIL is released
/// meanwhile.
///
/// An existing regular file at `path` is replaced, as safetensors replaces
/// it; nothing else is (a directory, a device). The file appears under its
/// name only once it is complete.
#[pyfunction]
#[pyo3(signature = (path, tensors, metadata=None))]
fn save_file(
    py: Python<'_>,
    path: PathBuf,
    tensors: Vec<TensorSpec>,
    metadata: Option<HashMap<String, String>>,
) -> PyResult<()> {
    let tensors = check_tensors(tensors).map_err(crate::python_error)?;
    let metadata = check_metadata(metadata.unwrap_or_default()).map_err(crate::python_error)?;
    py.detach(|| {
        let views: Vec<(&CheckedTensor, &[u8])> = tensors
            .iter()
            .map(|tensor| {
                let bytes: &[u8] = if tensor.length == 0 {
                    &[]
                } else {
                    // Safety: `check_tensors` refused null addresses; the
                    // caller (ecfloat's own Python code) passes the address
                    // and size of each tensor's host memory and holds the
                    // tensors while this runs, and nothing here writes to
                    // them.
                    unsafe {
                        std::slice::from_raw_parts(tensor.address as *const u8, tensor.length)
                    }
                };
                (tensor, bytes)
            })
            .collect();
        save_compressed(&path, &metadata, &views)
    })
    .map_err(crate::python_error)
}

/// The tensors in the order safetensors lays them out, once each is known
/// to be one it can store: a name given once and not one the file format
/// keeps for itself, a dtype safetensors names, and exactly the bytes its
/// dtype and shape take.
fn check_tensors(tensors: Vec<TensorSpec>) -> Result<Vec<CheckedTensor>, Error> {
    let mut names = HashSet::with_capacity(tensors.len());
    let mut checked = Vec::with_capacity(tensors.len());
    for (name, requested_dtype, shape, address, length) in tensors {
        let problem = |message: String| Error::Usage(format!("tensor {name}: {message}"));
        if !names.insert(name.clone()) {
            return Err(problem("the name is given twice".to_string()));
        }
        if name == "__metadata__" || name == schema::SOURCE_HEADER_TENSOR {
            return Err(problem(
                "this name is reserved by the file format".to_string(),
            ));
        }
        let Some(dtype) = safetensors_dtype(&requested_dtype) else {
            return Err(problem(format!(
                "dtype {requested_dtype:?} is not a safetensors dtype"
            )));
        };
        let bits = shape.iter().try_fold(dtype.bitsize() as u64, |bits, &d| {
            bits.checked_mul(d as u64)
        });
        let expected = match bits {
            Some(bits) if bits % 8 == 0 => bits / 8,
            Some(_) => {
                return Err(problem(format!(
                    "{dtype:?} {shape:?} does not fill a whole number of bytes"
                )));
            }
            None => {
                return Err(problem(format!(
                    "shape {shape:?} overflows its byte length"
                )));
            }
        };
        if length as u64 != expected {
            return Err(problem(format!(
                "{dtype:?} {shape:?} takes {expected} bytes, but {length} were given"
            )));
        }
        if address == 0 && length != 0 {
            return Err(problem("a null address".to_string()));
        }
        checked.push(CheckedTensor {
            name,
            dtype,
            dtype_name: format!("{dtype:?}"),
            shape: shape.into_iter().map(|d| d as u64).collect(),
            address,
            length,
        });
    }
    // safetensors' own order, so that the file decompresses to what
    // `safetensors.torch.save_file` writes.
    checked.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    Ok(checked)
}

/// The dtype a safetensors header names `name` (`"BF16"`), if any.
fn safetensors_dtype(name: &str) -> Option<Dtype> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// `metadata` as the header stores it, sorted by key so that the same
/// tensors and metadata always make the same file. The key and value that
/// mark a compressed file are refused: the file they would describe is
/// the plain one.
fn check_metadata(metadata: HashMap<String, String>) -> Result<Vec<(String, String)>, Error> {
    if metadata.get(schema::FORMAT_KEY).map(String::as_str) == Some(schema::FORMAT_NAME) {
        return Err(Error::Usage(format!(
            "metadata {}={:?} marks a compressed file; ecfloat writes it itself",
            schema::FORMAT_KEY,
            schema::FORMAT_NAME
        )));
    }
    let mut metadata: Vec<(String, String)> = metadata.into_iter().collect();
    metadata.sort();
    Ok(metadata)
}

/// Writes the plain safetensors file beside `output`, under a temporary
/// name, and compresses it to `output`: the library compresses from a
/// mapped file. The plain file is removed whatever happens; the
/// compressed one is written atomically by the library.
fn save_compressed(
    output: &Path,
    metadata: &[(String, String)],
    tensors: &[(&CheckedTensor, &[u8])],
) -> Result<(), Error> {
    if output.is_dir() {
        return Err(Error::OutputNotAFile {
            path: output.to_path_buf(),
            kind: "a directory",
        });
    }
    let plain = TemporaryFile::create_beside(output)?;
    let metadata: Vec<(&str, String)> = metadata
        .iter()
        .map(|(key, value)| (key.as_str(), value.clone()))
        .collect();
    let data: Vec<TensorData> = tensors
        .iter()
        .map(|(tensor, bytes)| TensorData {
            name: &tensor.name,
            dtype: &tensor.dtype_name,
            shape: &tensor.shape,
            bytes,
        })
        .collect();
    write_safetensors(plain.path(), &metadata, &data)?;
    let options = CompressOptions {
        force: true,
        progress: Progress::default(),
        ..CompressOptions::default()
    };
    ecfloat::container::compress_file(plain.path(), output, &options)?;
    Ok(())
}

/// A file created under a fresh name, removed when dropped.
struct TemporaryFile {
    path: PathBuf,
}

impl TemporaryFile {
    /// An empty file in `target`'s directory, named like the library's
    /// partial outputs (`.ecf-partial-…`), so that it is on the same file
    /// system and recognisable as ecfloat's if a killed process leaves it.
    fn create_beside(target: &Path) -> Result<Self, Error> {
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let directory = match target.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        loop {
            let number = CREATED.fetch_add(1, Ordering::Relaxed);
            let path = directory.join(format!(
                ".ecf-partial-{}-{number}.safetensors",
                std::process::id()
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(_) => return Ok(TemporaryFile { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(directory, e)),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Adds this module's functions to `module` (`ecfloat._ecfloat`).
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(inspect, module)?)?;
    module.add_function(wrap_pyfunction!(save_file, module)?)?;
    module.add_function(wrap_pyfunction!(use_threads, module)?)?;
    module.add_function(wrap_pyfunction!(document, module)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dtype: &str, shape: &[usize], length: usize) -> TensorSpec {
        (
            name.to_string(),
            dtype.to_string(),
            shape.to_vec(),
            8,
            length,
        )
    }

    fn refusal(tensors: Vec<TensorSpec>) -> String {
        match check_tensors(tensors) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("the tensors were accepted"),
        }
    }

    #[test]
    fn tensors_are_laid_out_in_safetensors_order() {
        let checked = check_tensors(vec![
            spec("b", "BF16", &[2], 4),
            spec("a", "BF16", &[3], 6),
            spec("c", "U8", &[1], 1),
            spec("d", "F32", &[], 4),
            spec("e", "F16", &[0, 5], 0),
        ])
        .unwrap();
        let order: Vec<&str> = checked.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(order, ["d", "a", "b", "e", "c"]);
        let names: Vec<&str> = checked.iter().map(|t| t.dtype_name.as_str()).collect();
        assert_eq!(names, ["F32", "BF16", "BF16", "F16", "U8"]);
    }

    #[test]
    fn bad_tensors_are_refused_by_name() {
        let twice = refusal(vec![spec("w", "F32", &[1], 4), spec("w", "F32", &[1], 4)]);
        assert!(
            twice.contains("tensor w: the name is given twice"),
            "{twice}"
        );
        let dtype = refusal(vec![spec("w", "F128", &[1], 16)]);
        assert!(dtype.contains("tensor w: dtype \"F128\""), "{dtype}");
        let short = refusal(vec![spec("w", "BF16", &[2, 3], 10)]);
        assert!(
            short.contains("tensor w: BF16 [2, 3] takes 12 bytes, but 10"),
            "{short}"
        );
        let huge = refusal(vec![spec("w", "F64", &[usize::MAX, 2], 0)]);
        assert!(huge.contains("tensor w: shape"), "{huge}");
        let null = refusal(vec![("w".into(), "U8".into(), vec![1], 0, 1)]);
        assert!(null.contains("tensor w: a null address"), "{null}");
        let reserved = refusal(vec![spec(schema::SOURCE_HEADER_TENSOR, "U8", &[1], 1)]);
        assert!(reserved.contains("reserved"), "{reserved}");
    }

    #[test]
    fn metadata_is_sorted_and_may_not_claim_compression() {
        let metadata =
            HashMap::from([("b".to_string(), "2".to_string()), ("a".into(), "1".into())]);
        assert_eq!(
            check_metadata(metadata).unwrap(),
            [("a".to_string(), "1".to_string()), ("b".into(), "2".into())]
        );
        let claim = HashMap::from([(
            schema::FORMAT_KEY.to_string(),
            schema::FORMAT_NAME.to_string(),
        )]);
        assert!(check_metadata(claim).is_err());
    }

    #[test]
    fn the_plain_file_is_removed_and_the_output_decompresses_to_it() {
        let directory = std::env::temp_dir().join(format!("ecf-commands-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let output = directory.join("model.ecf.safetensors");
        let weights: Vec<u8> = (0..4096u32)
            .flat_map(|i| ((i % 37) as u16 + 0x3c00).to_le_bytes())
            .collect();
        let tensor = CheckedTensor {
            name: "w".to_string(),
            dtype: Dtype::BF16,
            dtype_name: "BF16".to_string(),
            shape: vec![64, 64],
            address: weights.as_ptr() as usize,
            length: weights.len(),
        };
        save_compressed(
            &output,
            &[("k".to_string(), "v".to_string())],
            &[(&tensor, &weights)],
        )
        .unwrap();
        let left: Vec<_> = std::fs::read_dir(&directory)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left, ["model.ecf.safetensors"]);
        let rebuilt = directory.join("model.safetensors");
        ecfloat::container::decompress_file(&output, &rebuilt, false, &Progress::default())
            .unwrap();
        let rebuilt = std::fs::read(&rebuilt).unwrap();
        let parsed = safetensors::SafeTensors::deserialize(&rebuilt).unwrap();
        assert_eq!(parsed.tensor("w").unwrap().data(), &weights[..]);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
