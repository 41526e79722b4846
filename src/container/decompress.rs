//! `decompress` and `verify`: rebuild the source file from a compressed one,
//! tensor by tensor in the source's data order, checking every tensor's
//! checksum and the whole file's.

use std::path::Path;
use std::time::Instant;

use xxhash_rust::xxh3::Xxh3;

use crate::backend::{Backend, CpuBackend};
use crate::error::{Error, Result};

use rayon::prelude::*;

use super::Progress;
use super::read::{CodedTensor, CompressedFile, Storage, StoredTensor};
use super::write::AtomicOutput;

/// The outcome of checking one tensor.
#[derive(Debug)]
pub struct TensorCheck {
    pub name: String,
    pub coded: bool,
    pub bytes: u64,
    /// `None` when the tensor decoded to its recorded checksum.
    pub error: Option<Error>,
}

/// What decoding a whole file found.
#[derive(Debug)]
pub struct DecodeChecks {
    pub tensors: Vec<TensorCheck>,
    /// XXH3-64 of the rebuilt file, and the source file's recorded one.
    pub file_checksum: u64,
    pub expected_file_checksum: u64,
    pub source_bytes: u64,
    pub decoded_bytes: u64,
    pub seconds: f64,
}

impl DecodeChecks {
    pub fn file_matches(&self) -> bool {
        self.file_checksum == self.expected_file_checksum
    }

    pub fn all_ok(&self) -> bool {
        self.file_matches() && self.tensors.iter().all(|t| t.error.is_none())
    }
}

/// Rebuilds the source file at `output`; fails, leaving no output, on the
/// first tensor that does not decode to its checksum.
pub fn decompress_file(
    input: &Path,
    output: &Path,
    force: bool,
    progress: &Progress,
) -> Result<DecodeChecks> {
    let file = CompressedFile::open(input)?;
    let mut out = AtomicOutput::create(output, force, &[input])?;
    let checks = rebuild(&file, &CpuBackend::new(), true, progress, |bytes| {
        out.write_all(bytes)
    })?;
    if !checks.file_matches() {
        return Err(Error::ChecksumMismatch {
            path: input.to_path_buf(),
            tensor: None,
            expected: checks.expected_file_checksum,
            actual: checks.file_checksum,
        });
    }
    out.commit()?;
    Ok(checks)
}

/// Decodes everything on the CPU and checks every checksum, reporting each
/// tensor.
pub fn verify_file(input: &Path) -> Result<DecodeChecks> {
    verify_file_on(input, &CpuBackend::new(), &Progress::default())
}

/// Decodes everything on `backend` and checks every checksum.
pub fn verify_file_on(
    input: &Path,
    backend: &dyn Backend,
    progress: &Progress,
) -> Result<DecodeChecks> {
    let file = CompressedFile::open(input)?;
    rebuild(&file, backend, false, progress, |_| Ok(()))
}

/// Decoded bytes of small tensors decoded together, in parallel.
const BATCH_BYTES: u64 = 64 << 20;

/// Streams the source file's bytes into `sink`. With `stop_on_error`, the
/// first failing tensor ends it with that error; otherwise failures are
/// recorded and the rest still checked.
fn rebuild(
    file: &CompressedFile,
    backend: &dyn Backend,
    stop_on_error: bool,
    progress: &Progress,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<DecodeChecks> {
    let started = Instant::now();
    let mut file_hash = Xxh3::new();
    let mut emit = |bytes: &[u8]| -> Result<()> {
        file_hash.update(bytes);
        sink(bytes)
    };
    emit(&(file.source_header.len() as u64).to_le_bytes())?;
    emit(&file.source_header)?;

    let mut tensors = Vec::with_capacity(file.tensors.len());
    let mut decoded_bytes = 0;
    // One buffer, grown to the largest tensor, serves the large ones.
    let mut buffer = Vec::new();
    for batch in batches(&file.tensors) {
        // Small tensors decode in parallel, each into its own buffer.
        let parallel: Vec<Option<Result<Vec<u8>>>> = if batch.len() > 1 {
            batch
                .par_iter()
                .map(|tensor| match &tensor.storage {
                    Storage::Raw => None,
                    Storage::Coded(coded) => {
                        let mut own = Vec::new();
                        Some(
                            decode_tensor(file, backend, &tensor.source.name, coded, &mut own)
                                .map(|()| own),
                        )
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut parallel = parallel.into_iter();
        for tensor in batch {
            let prepared = parallel.next().flatten();
            let name = &tensor.source.name;
            let (coded, error) = match &tensor.storage {
                Storage::Raw => {
                    emit(file.stored_bytes(tensor))?;
                    (false, None)
                }
                Storage::Coded(coded) => {
                    decoded_bytes += coded.params.decoded_bytes();
                    let len = coded.params.decoded_bytes() as usize;
                    let decoded = match prepared {
                        Some(result) => result.map(|own| {
                            buffer = own;
                        }),
                        None => decode_tensor(file, backend, name, coded, &mut buffer),
                    };
                    let error = match decoded {
                        Ok(()) => {
                            emit(&buffer[..len])?;
                            None
                        }
                        Err(error) => Some(error),
                    };
                    (true, error)
                }
            };
            let error = match error {
                Some(error) if stop_on_error => return Err(error),
                error => error,
            };
            tensors.push(TensorCheck {
                name: name.clone(),
                coded,
                bytes: tensor.source.len() as u64,
                error,
            });
            file.release(tensor);
            progress.advance(tensor.source.len() as u64);
        }
    }
    Ok(DecodeChecks {
        tensors,
        file_checksum: file_hash.digest(),
        expected_file_checksum: file.source_checksum,
        source_bytes: file.source_len(),
        decoded_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Consecutive runs of tensors of at most `BATCH_BYTES` decoded bytes in
/// all (a larger tensor alone).
fn batches(tensors: &[StoredTensor]) -> Vec<&[StoredTensor]> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, tensor) in tensors.iter().enumerate() {
        let len = tensor.source.len() as u64;
        if index > start && bytes + len > BATCH_BYTES {
            batches.push(&tensors[start..index]);
            start = index;
            bytes = 0;
        }
        bytes += len;
    }
    if start < tensors.len() {
        batches.push(&tensors[start..]);
    }
    batches
}

/// Decodes one coded tensor on `backend`, checks its checksum, and only
/// then emits it.
fn decode_tensor(
    file: &CompressedFile,
    backend: &dyn Backend,
    name: &str,
    coded: &CodedTensor,
    buffer: &mut Vec<u8>,
) -> Result<()> {
    let len = coded.params.decoded_bytes() as usize;
    if buffer.len() < len {
        buffer.try_reserve_exact(len - buffer.len()).map_err(|_| {
            Error::corrupt(
                file.path(),
                Some(name),
                format!("cannot allocate {len} bytes to decode into"),
            )
        })?;
        buffer.resize(len, 0);
    }
    let decoded = &mut buffer[..len];
    backend
        .decode_to_host(&file.view(coded), &coded.index, decoded)
        .map_err(|e| match e {
            Error::Backend { backend, message } => {
                Error::corrupt(file.path(), Some(name), format!("{backend}: {message}"))
            }
            other => other,
        })?;
    let actual = xxhash_rust::xxh3::xxh3_64(decoded);
    if actual != coded.checksum {
        return Err(Error::ChecksumMismatch {
            path: file.path().to_path_buf(),
            tensor: Some(name.to_string()),
            expected: coded.checksum,
            actual,
        });
    }
    Ok(())
}
