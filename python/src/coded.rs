//! Weights kept coded in memory, for `ecfloat.torch.load_model(...,
//! keep_coded=True)`: a [`CodedWeights`] holds the coded tensors of a
//! checkpoint, grouped by block, on the host or on a GPU, and decodes one
//! block at a time into memory torch allocated, just before the block runs.
//!
//! Every tensor is checked once when kept: on the host by the checksum
//! taken at compression, on a GPU by the decoder's validation of every
//! block (as `ecfloat.torch.load_file` checks what it loads). A decode
//! that fails later names the file, the tensor and the block, and leaves
//! the weights as they were, ready for another try.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ecfloat::backend::cuda::CudaBackend;
use ecfloat::backend::{Backend, CpuBackend, DecodeJob, DeviceTensor, PendingDecode};
use ecfloat::container::{self, Storage};
use ecfloat::runtime::Group;
use ecfloat::{Error, runtime};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::{Checkpoint, Shard, plain_entry, python_error, python_error_in};

/// Where kept tensors live and decode.
enum Decoder {
    Host(CpuBackend),
    /// A GPU, decoding on a stream of the caller's (torch's decode stream).
    Cuda(Arc<CudaBackend>),
}

impl Decoder {
    fn backend(&self) -> &dyn Backend {
        match self {
            Decoder::Host(backend) => backend,
            Decoder::Cuda(backend) => backend.as_ref(),
        }
    }
}

struct KeptTensor {
    name: String,
    file: PathBuf,
    device: Box<dyn DeviceTensor>,
}

struct Kept {
    decoder: Decoder,
    tensors: Vec<KeptTensor>,
    groups: Vec<Group>,
}

impl Kept {
    fn group(&self, group: usize) -> PyResult<&Group> {
        self.groups.get(group).ok_or_else(|| {
            PyValueError::new_err(format!(
                "block {group} does not exist; the weights have {}",
                self.groups.len()
            ))
        })
    }

    fn jobs(&self, group: &Group) -> Vec<DecodeJob<'_>> {
        group.jobs(|t| self.tensors[t].device.as_ref())
    }

    /// `error`, from decoding `group`, with the failing tensor's file and
    /// name, and the block's, in its message.
    fn block_error(&self, group: &Group, error: Error) -> PyErr {
        let error = match &error {
            Error::CorruptJob { job, .. } => match group.tensors.get(*job) {
                Some(&t) => error.in_tensor(&self.tensors[t].file, &self.tensors[t].name),
                None => error,
            },
            _ => error,
        };
        python_error_in(error, &format!("decoding block {}", group.name))
    }

    /// Starts decoding `group` into the `length` bytes at `address`: on a
    /// GPU it is queued on the decode stream, on the host it runs now.
    ///
    /// # Safety
    /// `address..address + length` is memory the caller allocated on the
    /// weights' device, which it keeps, and nothing else uses, until the
    /// decode has been waited for.
    unsafe fn start(&self, group: &Group, address: u64, length: u64) -> Result<Started, Error> {
        let jobs = self.jobs(group);
        match &self.decoder {
            Decoder::Host(backend) => {
                if length > 0 && address == 0 {
                    return Err(Error::Usage("decoding into a null address".to_string()));
                }
                let out: &mut [u8] = if length == 0 {
                    &mut []
                } else {
                    // Safety: as the caller promised.
                    unsafe { std::slice::from_raw_parts_mut(address as *mut u8, length as usize) }
                };
                backend.decode_into_host(&jobs, out)?;
                Ok(Started::Done)
            }
            Decoder::Cuda(backend) => {
                // Safety: as the caller promised.
                let pending =
                    unsafe { backend.start_decode_into_borrowed(&jobs, address, length) }?;
                Ok(Started::Queued(pending))
            }
        }
    }
}

enum Started {
    Done,
    Queued(Box<dyn PendingDecode>),
}

/// A block as Python sees it: `(name, bytes, [(tensor, offset, bytes)])`.
type BlockLayout = (String, u64, Vec<(String, u64, u64)>);

/// A checkpoint's coded tensors, kept on a device and grouped by block.
#[pyclass(frozen, module = "ecfloat._ecfloat")]
pub(crate) struct CodedWeights {
    kept: Arc<Kept>,
}

impl Checkpoint {
    /// Uploads the tensors of `groups` (each `(block name, tensor names)`)
    /// to the host decoder or to GPU `cuda.0` decoding on stream `cuda.1`,
    /// checking each.
    fn keep(
        &self,
        groups: &[(String, Vec<String>)],
        cuda: Option<(usize, usize)>,
    ) -> Result<Kept, Error> {
        let decoder = match cuda {
            None => Decoder::Host(CpuBackend::new()),
            // Safety: the caller passes a stream of that device (torch's
            // decode stream), which it keeps alive while the weights are.
            Some((device, stream)) => Decoder::Cuda(Arc::new(unsafe {
                CudaBackend::on_borrowed_stream(device, stream as _)
            }?)),
        };
        let mut tensors = Vec::new();
        let mut checked = Vec::new();
        for (_, names) in groups {
            for name in names {
                let (_, _, _, shard) = self
                    .by_name
                    .get(name)
                    .map(|&index| &self.tensors[index])
                    .ok_or_else(|| Error::Usage(format!("the checkpoint has no tensor {name}")))?;
                let shard = &self.shards[*shard];
                let device = upload(shard, name, &decoder, &mut checked)
                    .map_err(|e| e.in_tensor(shard.path(), name))?;
                tensors.push(KeptTensor {
                    name: name.clone(),
                    file: shard.path().to_path_buf(),
                    device,
                });
            }
        }
        let mut first = 0;
        let groups: Vec<Group> = groups
            .iter()
            .map(|(name, names)| {
                let members: Vec<usize> = (first..first + names.len()).collect();
                first += names.len();
                Group::packed(name.clone(), members, |t| tensors[t].device.decoded_bytes())
            })
            .collect();
        let kept = Kept {
            decoder,
            tensors,
            groups,
        };
        if let Decoder::Cuda(backend) = &kept.decoder {
            // The GPU's check: every block of every group decoded once.
            let largest = kept.groups.iter().map(|g| g.bytes).max().unwrap_or(0);
            let scratch = backend.alloc(largest.max(4))?;
            for group in &kept.groups {
                backend
                    .decode(&kept.jobs(group), scratch.as_ref())
                    .map_err(|error| match error {
                        Error::CorruptJob { job, .. } => {
                            let tensor = &kept.tensors[group.tensors[job]];
                            error.in_tensor(&tensor.file, &tensor.name)
                        }
                        error => error,
                    })?;
            }
        }
        Ok(kept)
    }
}

/// Tensor `name` of `shard` on `decoder`'s device; on the host a coded
/// tensor is decoded once into `scratch` first, against its checksum.
fn upload(
    shard: &Shard,
    name: &str,
    decoder: &Decoder,
    scratch: &mut Vec<u8>,
) -> Result<Box<dyn DeviceTensor>, Error> {
    let backend = decoder.backend();
    match shard {
        Shard::Plain(file, entries) => {
            let entry = plain_entry(file, entries, name)?;
            let uploaded = backend.upload_raw(&file.data()[entry.range.clone()]);
            file.release(entry.range);
            uploaded
        }
        Shard::Compressed(file) => {
            let tensor = file.tensor(name)?;
            let uploaded = match &tensor.storage {
                Storage::Raw => backend.upload_raw(file.stored_bytes(tensor)),
                Storage::Coded(coded) => {
                    if let Decoder::Host(_) = decoder {
                        scratch.clear();
                        scratch.resize(tensor.source.len(), 0);
                        let decode = container::cpu_decoder();
                        file.read_tensor_into(tensor, &decode, scratch)?;
                    }
                    file.block_index(name, coded)
                        .and_then(|index| backend.upload(&file.view(coded), &index))
                }
            };
            file.release(tensor);
            uploaded
        }
    }
}

impl CodedWeights {
    /// `Checkpoint.keep_coded`.
    pub(crate) fn keep(
        checkpoint: &Checkpoint,
        py: Python<'_>,
        groups: Vec<(String, Vec<String>)>,
        cuda: Option<(usize, usize)>,
    ) -> PyResult<Self> {
        let kept = py
            .detach(|| checkpoint.keep(&groups, cuda))
            .map_err(python_error)?;
        Ok(CodedWeights {
            kept: Arc::new(kept),
        })
    }
}

#[pymethods]
impl CodedWeights {
    /// Each block as `(name, bytes, [(tensor, offset, bytes)])`: where its
    /// tensors land in a decode buffer of `bytes` bytes (offsets 4-byte
    /// aligned).
    fn layout(&self) -> Vec<BlockLayout> {
        let kept = &self.kept;
        kept.groups
            .iter()
            .map(|group| {
                let tensors = group
                    .tensors
                    .iter()
                    .zip(&group.offsets)
                    .map(|(&t, &offset)| {
                        let tensor = &kept.tensors[t];
                        (tensor.name.clone(), offset, tensor.device.decoded_bytes())
                    })
                    .collect();
                (group.name.clone(), group.bytes, tensors)
            })
            .collect()
    }

    /// Bytes the coded tensors occupy on their device.
    fn coded_bytes(&self) -> u64 {
        self.kept
            .tensors
            .iter()
            .map(|t| t.device.resident_bytes())
            .sum()
    }

    /// Bytes the same tensors take decoded.
    fn decoded_bytes(&self) -> u64 {
        self.kept
            .tensors
            .iter()
            .map(|t| t.device.decoded_bytes())
            .sum()
    }

    /// Starts decoding block `group` into the `length` bytes at `address`,
    /// which the caller allocated on the weights' device (host memory, or
    /// device memory of that GPU) and keeps until the returned decode is
    /// waited for. On a GPU the decode is queued on the decode stream; on
    /// the host it runs now, without the GIL.
    fn start_decode(
        &self,
        py: Python<'_>,
        group: usize,
        address: u64,
        length: u64,
    ) -> PyResult<BlockDecode> {
        let kept = &self.kept;
        let block = kept.group(group)?;
        // Safety: the caller (ecfloat's own Python code) passes a buffer
        // it allocated for the decodes of these weights and holds until it
        // has waited for this one.
        let started = py.detach(|| unsafe { kept.start(block, address, length) });
        let started = started.map_err(|error| kept.block_error(block, error))?;
        Ok(BlockDecode {
            kept: kept.clone(),
            group,
            pending: Mutex::new(Some(started)),
        })
    }
}

/// A block decode started by [`CodedWeights::start_decode`].
#[pyclass(frozen, module = "ecfloat._ecfloat")]
pub(crate) struct BlockDecode {
    kept: Arc<Kept>,
    group: usize,
    pending: Mutex<Option<Started>>,
}

#[pymethods]
impl BlockDecode {
    /// Waits for the decode and checks it: a block the decoder found
    /// corrupt raises, naming the file, the tensor and the block. Waiting
    /// again returns at once.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        let started = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(Started::Queued(pending)) = started else {
            return Ok(());
        };
        let block = &self.kept.groups[self.group];
        py.detach(|| pending.wait())
            .map_err(|error| self.kept.block_error(block, error))
    }
}

/// The name of the block a tensor belongs to in the Rust runtime's
/// grouping (`model.layers.3` for `model.layers.3.mlp.up_proj.weight`), or
/// `None` for a tensor outside the numbered layers.
#[pyfunction]
pub(crate) fn layer_block(name: &str) -> Option<String> {
    runtime::layer_group(name).map(|(group, _, _)| group)
}
