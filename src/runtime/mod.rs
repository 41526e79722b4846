//! Keep a compressed model on the device and decode each block of it just
//! before it runs.
//!
//! [`Model::open`] reads a compressed file (or every compressed file of a
//! directory, as sharded checkpoints are), uploads every tensor once — coded
//! tensors as their planes, the others as they are — and groups the tensors
//! by layer from their names. [`Model::decode_group`] then decodes a whole
//! group in one call into a [`GroupBuffer`] sized for the largest group,
//! and hands out a view of each tensor in it. A decode takes its buffer and
//! the decoded group keeps it until [`DecodedGroup::into_buffer`] gives it
//! back, so no buffer can be decoded into while its views are in use. With
//! two buffers, [`Model::start_decode`] decodes the next group while the
//! caller computes on the current one. Each group's first decode is
//! checked against its tensors' recorded checksums (read back once);
//! every decode, against the decoder's validation of every block.
//!
//! ```
//! use ecfloat::backend::CpuBackend;
//! use ecfloat::runtime::{Model, ModelOptions};
//! # use ecfloat::container::{compress_file, write::{write_safetensors, TensorData}};
//! # let directory = tempfile::tempdir().unwrap();
//! # let source = directory.path().join("model.safetensors");
//! # let tensors: Vec<(String, Vec<u8>)> = (0..2).flat_map(|layer| ["q", "v"].map(|p| {
//! #     let values = ecfloat::synth::heavy_tailed(4096, 64, 0.02, layer);
//! #     (format!("layers.{layer}.{p}.weight"), ecfloat::synth::to_bytes(&values, ecfloat::codec::FloatKind::Bf16))
//! # })).collect();
//! # let tensors: Vec<TensorData> = tensors.iter().map(|(name, bytes)| TensorData {
//! #     name, dtype: "BF16", shape: &[64, 64], bytes }).collect();
//! # write_safetensors(&source, &[], &tensors).unwrap();
//! # let path = directory.path().join("model.ecf.safetensors");
//! # compress_file(&source, &path, &Default::default()).unwrap();
//! let backend = CpuBackend::new();
//! let model = Model::open(&path, &backend, ModelOptions::default())?;
//! // Two buffers: the next group decodes while this one is used.
//! let groups = model.groups().len();
//! let mut spare = Some(model.group_buffer()?);
//! let mut pending = Some(model.start_decode(0, model.group_buffer()?)?);
//! for group in 0..groups {
//!     let decoded = pending.take().unwrap().wait()?;
//!     if group + 1 < groups {
//!         pending = Some(model.start_decode(group + 1, spare.take().unwrap())?);
//!     }
//!     for view in decoded.views() {
//!         // Bytes view.offset..view.offset + view.bytes of decoded.buffer().
//!         assert_eq!(view.dtype, safetensors::Dtype::BF16);
//!     }
//!     spare = Some(decoded.into_buffer());
//! }
//! let memory = model.memory();
//! assert!(memory.resident_bytes < memory.uncompressed_bytes);
//! # Ok::<(), ecfloat::Error>(())
//! ```

use std::cell::Cell;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde::Serialize;

use crate::backend::{Backend, DecodeJob, DeviceBuffer, DeviceTensor, PendingDecode};
use crate::container::{CompressedFile, Storage};
use crate::error::{Error, Result};

mod grouping;

pub use grouping::{Grouping, layer_group};

/// How to open a model.
#[derive(Default)]
pub struct ModelOptions {
    pub grouping: Grouping,
}

/// One tensor of the model, resident on the device.
pub struct ModelTensor {
    pub name: String,
    /// The compressed file it is stored in.
    pub file: PathBuf,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub decoded_bytes: u64,
    /// Index of its group in [`Model::groups`].
    pub group: usize,
    /// The checksum of its decoded bytes recorded at compression, if coded.
    checksum: Option<u64>,
    device: Box<dyn DeviceTensor>,
}

/// Tensors decoded together, and where each lands in a group buffer.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    pub name: String,
    /// Indices into [`Model::tensors`], in buffer order.
    pub tensors: Vec<usize>,
    /// Byte offset of each tensor in the buffer (4-byte aligned).
    pub offsets: Vec<u64>,
    /// Bytes of the buffer the group fills.
    pub bytes: u64,
}

impl Group {
    /// Tensors `tensors`, of `decoded_bytes(tensor)` bytes each, one after
    /// another in a buffer, each at a 4-byte-aligned offset: GPU decoders
    /// store whole words, and every float dtype's elements stay aligned.
    pub fn packed(
        name: String,
        tensors: Vec<usize>,
        decoded_bytes: impl Fn(usize) -> u64,
    ) -> Group {
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut bytes = 0;
        for &t in &tensors {
            offsets.push(bytes);
            bytes = (bytes + decoded_bytes(t)).next_multiple_of(4);
        }
        Group {
            name,
            tensors,
            offsets,
            bytes,
        }
    }

    /// The group's decode jobs: each tensor, as `device_tensor` gives it
    /// by its index, at its offset.
    pub fn jobs<'a>(
        &self,
        device_tensor: impl Fn(usize) -> &'a dyn DeviceTensor,
    ) -> Vec<DecodeJob<'a>> {
        self.tensors
            .iter()
            .zip(&self.offsets)
            .map(|(&t, &offset)| DecodeJob {
                tensor: device_tensor(t),
                offset,
            })
            .collect()
    }
}

/// Where a decoded tensor is in its group buffer.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [u64],
    /// Byte offset in the group buffer.
    pub offset: u64,
    pub bytes: u64,
}

/// A device buffer sized for the model's largest group.
pub struct GroupBuffer {
    buffer: Box<dyn DeviceBuffer>,
}

impl GroupBuffer {
    pub fn device_buffer(&self) -> &dyn DeviceBuffer {
        self.buffer.as_ref()
    }
}

/// A group decoded into a buffer, which it holds until
/// [`DecodedGroup::into_buffer`].
pub struct DecodedGroup<'a> {
    model: &'a Model<'a>,
    group: usize,
    buffer: GroupBuffer,
}

impl<'a> DecodedGroup<'a> {
    pub fn group(&self) -> &'a Group {
        &self.model.groups[self.group]
    }

    pub fn buffer(&self) -> &dyn DeviceBuffer {
        self.buffer.buffer.as_ref()
    }

    /// Gives the buffer back for the next decode; the views end here.
    pub fn into_buffer(self) -> GroupBuffer {
        self.buffer
    }

    /// Each tensor of the group, in buffer order.
    pub fn views(&self) -> impl Iterator<Item = TensorView<'a>> + 'a {
        let model = self.model;
        let group = &model.groups[self.group];
        group
            .tensors
            .iter()
            .zip(&group.offsets)
            .map(move |(&t, &offset)| {
                let tensor = &model.tensors[t];
                TensorView {
                    name: &tensor.name,
                    dtype: tensor.dtype,
                    shape: &tensor.shape,
                    offset,
                    bytes: tensor.decoded_bytes,
                }
            })
    }
}

/// A group decode still running on the device.
pub struct PendingGroup<'a> {
    model: &'a Model<'a>,
    decode: GroupDecode,
}

impl<'a> PendingGroup<'a> {
    /// Waits for the decode; only then are its views available. A tensor
    /// whose coded data the device found corrupt is named in the error.
    pub fn wait(self) -> Result<DecodedGroup<'a>> {
        self.model.finish_decode(self.decode)
    }

    /// The backend's handle of the running decode (for a CUDA client, its
    /// event: see `CudaBackend::decode_event`).
    pub fn pending(&self) -> &dyn PendingDecode {
        self.decode.pending.as_ref()
    }
}

/// A group decode still running, which holds its buffer but not the model:
/// for a client that keeps it beside the model, and gives it back to
/// [`Model::finish_decode`].
pub struct GroupDecode {
    group: usize,
    buffer: GroupBuffer,
    pending: Box<dyn PendingDecode>,
}

impl GroupDecode {
    /// The group being decoded.
    pub fn group(&self) -> usize {
        self.group
    }
}

/// Device memory the model uses, in bytes.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct MemoryReport {
    /// The uploaded tensors: coded planes and raw tensors.
    pub resident_bytes: u64,
    /// Group buffers allocated so far.
    pub scratch_bytes: u64,
    /// Resident plus scratch: everything the model holds at once.
    pub peak_bytes: u64,
    /// The same model decoded.
    pub uncompressed_bytes: u64,
    /// The largest group, which sizes each group buffer.
    pub largest_group_bytes: u64,
}

pub struct Model<'b> {
    backend: &'b dyn Backend,
    tensors: Vec<ModelTensor>,
    groups: Vec<Group>,
    largest_group: u64,
    scratch_bytes: Cell<u64>,
    /// Per group, whether a decode of it has matched its checksums.
    checked: Vec<Cell<bool>>,
}

impl<'b> Model<'b> {
    /// Opens a compressed file, or every compressed `.safetensors` file of
    /// a directory, and uploads every tensor to `backend`.
    pub fn open(path: &Path, backend: &'b dyn Backend, options: ModelOptions) -> Result<Self> {
        let files = crate::container::checkpoint::compressed_files(path)?;
        let mut tensors = Vec::new();
        for file_path in &files {
            let file = CompressedFile::open(file_path)?;
            for stored in &file.tensors {
                let source = &stored.source;
                let device = match &stored.storage {
                    Storage::Raw => backend.upload_raw(file.stored_bytes(stored)),
                    Storage::Coded(coded) => file
                        .block_index(&source.name, coded)
                        .and_then(|index| backend.upload(&file.view(coded), &index)),
                }
                .map_err(|e| e.in_tensor(file_path, &source.name))?;
                tensors.push(ModelTensor {
                    name: source.name.clone(),
                    file: file_path.clone(),
                    dtype: source.dtype,
                    shape: source.shape.iter().map(|&d| d as u64).collect(),
                    decoded_bytes: source.len() as u64,
                    group: 0,
                    checksum: match &stored.storage {
                        Storage::Raw => None,
                        Storage::Coded(coded) => Some(coded.checksum),
                    },
                    device,
                });
            }
        }
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        let groups = options.grouping.groups(&names);
        let groups: Vec<Group> = groups
            .into_iter()
            .map(|(name, members)| Group::packed(name, members, |t| tensors[t].decoded_bytes))
            .collect();
        for (index, group) in groups.iter().enumerate() {
            for &t in &group.tensors {
                tensors[t].group = index;
            }
        }
        let largest_group = groups.iter().map(|g| g.bytes).max().unwrap_or(0);
        Ok(Model {
            backend,
            tensors,
            checked: groups.iter().map(|_| Cell::new(false)).collect(),
            groups,
            largest_group,
            scratch_bytes: Cell::new(0),
        })
    }

    pub fn backend(&self) -> &'b dyn Backend {
        self.backend
    }

    pub fn tensors(&self) -> &[ModelTensor] {
        &self.tensors
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The group a tensor belongs to, by the tensor's name.
    pub fn group_of(&self, tensor: &str) -> Option<usize> {
        self.tensors
            .iter()
            .find(|t| t.name == tensor)
            .map(|t| t.group)
    }

    /// A buffer any group decodes into. Two allow decoding one group while
    /// computing on another.
    pub fn group_buffer(&self) -> Result<GroupBuffer> {
        let buffer = self.backend.alloc(self.largest_group.max(4))?;
        self.scratch_bytes
            .set(self.scratch_bytes.get() + buffer.len().next_multiple_of(4));
        Ok(GroupBuffer { buffer })
    }

    /// Decodes group `group` into `buffer` and waits for it.
    pub fn decode_group(&self, group: usize, buffer: GroupBuffer) -> Result<DecodedGroup<'_>> {
        self.start_decode(group, buffer)?.wait()
    }

    /// Starts decoding group `group` into `buffer`; its views are available
    /// once [`PendingGroup::wait`] returns.
    pub fn start_decode(&self, group: usize, buffer: GroupBuffer) -> Result<PendingGroup<'_>> {
        Ok(PendingGroup {
            model: self,
            decode: self.submit_decode(group, buffer)?,
        })
    }

    /// Starts decoding group `group` into `buffer`, as
    /// [`start_decode`](Self::start_decode) does, with a handle that does
    /// not borrow the model.
    pub fn submit_decode(&self, group: usize, buffer: GroupBuffer) -> Result<GroupDecode> {
        let jobs = self.jobs(group)?;
        let pending = self
            .backend
            .decode_async(&jobs, buffer.buffer.as_ref())
            .map_err(|e| self.name_job(group, e))?;
        Ok(GroupDecode {
            group,
            buffer,
            pending,
        })
    }

    /// Waits for a decode [`submit_decode`](Self::submit_decode) started on
    /// this model.
    pub fn finish_decode(&self, decode: GroupDecode) -> Result<DecodedGroup<'_>> {
        let GroupDecode {
            group,
            buffer,
            pending,
        } = decode;
        pending.wait().map_err(|e| self.name_job(group, e))?;
        if self
            .groups
            .get(group)
            .is_none_or(|g| g.bytes > buffer.buffer.len())
        {
            return Err(Error::Usage(format!(
                "group decode {group} was not started on this model"
            )));
        }
        self.check_first_decode(group, buffer.buffer.as_ref())?;
        Ok(DecodedGroup {
            model: self,
            group,
            buffer,
        })
    }

    /// Checks a group's first successful decode against the checksums
    /// recorded at compression, reading its bytes back once (on a GPU, a
    /// copy to the host): the decoder's validation of every block cannot
    /// see a flipped raw bit, which only the checksum does. Later decodes
    /// of the group run the same decoder on the same resident planes, and
    /// are not read back.
    fn check_first_decode(&self, group: usize, buffer: &dyn DeviceBuffer) -> Result<()> {
        if self.checked[group].get() {
            return Ok(());
        }
        let members = &self.groups[group];
        let mut bytes = Vec::new();
        for (&t, &offset) in members.tensors.iter().zip(&members.offsets) {
            let tensor = &self.tensors[t];
            let Some(expected) = tensor.checksum else {
                continue;
            };
            bytes.resize(tensor.decoded_bytes as usize, 0);
            self.backend
                .download(buffer, offset, &mut bytes)
                .map_err(|e| e.in_tensor(&tensor.file, &tensor.name))?;
            let actual = twox_hash::XxHash3_64::oneshot(&bytes);
            if actual != expected {
                return Err(Error::ChecksumMismatch {
                    path: tensor.file.clone(),
                    tensor: Some(tensor.name.clone()),
                    expected,
                    actual,
                });
            }
        }
        self.checked[group].set(true);
        Ok(())
    }

    /// The decode jobs of a group.
    pub fn jobs(&self, group: usize) -> Result<Vec<DecodeJob<'_>>> {
        let group = self.groups.get(group).ok_or_else(|| {
            Error::Usage(format!(
                "group {group} does not exist; the model has {}",
                self.groups.len()
            ))
        })?;
        Ok(group.jobs(|t| self.tensors[t].device.as_ref()))
    }

    /// Names the tensor, and its file, of a failing job of `group`'s decode.
    fn name_job(&self, group: usize, error: Error) -> Error {
        let job = match &error {
            Error::CorruptJob { job, .. } => *job,
            _ => return error,
        };
        match self.groups.get(group).and_then(|g| g.tensors.get(job)) {
            Some(&t) => error.in_tensor(&self.tensors[t].file, &self.tensors[t].name),
            None => error,
        }
    }

    pub fn memory(&self) -> MemoryReport {
        let resident_bytes = self.tensors.iter().map(|t| t.device.resident_bytes()).sum();
        let scratch_bytes = self.scratch_bytes.get();
        MemoryReport {
            resident_bytes,
            scratch_bytes,
            peak_bytes: resident_bytes + scratch_bytes,
            uncompressed_bytes: self.tensors.iter().map(|t| t.decoded_bytes).sum(),
            largest_group_bytes: self.largest_group,
        }
    }
}
