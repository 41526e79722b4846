//! Weights that stay compressed (the DFloat11 mode): a model's tensors are
//! uploaded coded, as [`runtime::Model`](crate::runtime::Model) keeps them,
//! and a layer's weights are decoded into a reused group buffer right
//! before a module of that layer runs.
//!
//! A [`CompressedModel`] holds one decoded group at a time, as candle
//! tensors. Taking a weight of another group drops them, decodes that
//! group into the buffer, makes its tensors, and starts decoding the group
//! after it into the buffer (a backend that decodes asynchronously does
//! so while the caller computes), so a model run in order finds each
//! layer decoded or under way. [`CompressedLinear`] and
//! [`CompressedEmbedding`] are candle `Module`s over such weights; they
//! compute exactly what candle-nn's `Linear` and `Embedding` do, on the
//! same bits. [`CompressedModel::memory`] says what the model holds.
//!
//! Decoded bytes become candle tensors as candle's safetensors loading
//! makes them (see [`super::CompressedTensors`]), converted to the model's
//! dtype.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use candle_core::{DType, Device, Module, Tensor};
use serde::Serialize;

use crate::backend::{Backend, CpuBackend};
use crate::error::Result;
use crate::runtime::{DecodedGroup, GroupBuffer, GroupDecode, Model, ModelOptions};

use super::{candle_error, candle_tensor};

/// A compressed checkpoint resident in its coded form, whose tensors are
/// decoded a group (a layer) at a time. Clones share the model.
#[derive(Clone)]
pub struct CompressedModel {
    resident: Arc<Mutex<Resident>>,
    dtype: DType,
    device: Device,
}

/// The model, its buffer, and the group decoded last.
struct Resident {
    model: Model<'static>,
    /// The group buffer, while no decode holds it.
    buffer: Option<GroupBuffer>,
    /// The decode of the group after the current one.
    prefetch: Option<GroupDecode>,
    /// The group decoded last, its tensors in group order.
    current: Option<(usize, Vec<Tensor>)>,
    /// Bytes of the current group's tensors.
    decoded_bytes: u64,
    peak_bytes: u64,
}

/// What a [`CompressedModel`] holds, in bytes.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CompressedMemory {
    /// The coded tensors (and those stored raw), resident for the model's
    /// life.
    pub compressed_bytes: u64,
    /// The group buffer decodes write into: the largest group's decoded
    /// size.
    pub buffer_bytes: u64,
    /// The decoded group's candle tensors, in the model's dtype.
    pub decoded_bytes: u64,
    /// The most the three above came to at once.
    pub peak_bytes: u64,
    /// Every tensor decoded in the model's dtype: what a `VarBuilder` of
    /// that dtype makes of the whole checkpoint.
    pub uncompressed_bytes: u64,
}

/// The CPU decoder, shared by every model on candle's CPU device.
fn cpu_backend() -> &'static CpuBackend {
    static BACKEND: OnceLock<CpuBackend> = OnceLock::new();
    BACKEND.get_or_init(CpuBackend::new)
}

impl CompressedModel {
    /// Opens a compressed file or checkpoint directory, whose tensors come
    /// as `dtype` on `device`. The coded tensors are held in host memory
    /// and decoded on the CPU; on a device other than the CPU, candle
    /// copies each decoded group to it.
    pub fn open(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::with_backend(path, cpu_backend(), dtype, device)
    }

    /// Opens a compressed file or checkpoint directory resident on
    /// `backend`, which decodes each group; the decoded bytes are brought
    /// to `device` through the host.
    pub fn with_backend(
        path: &Path,
        backend: &'static dyn Backend,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let model = Model::open(path, backend, ModelOptions::default())?;
        let peak_bytes = model.memory().resident_bytes;
        Ok(CompressedModel {
            resident: Arc::new(Mutex::new(Resident {
                model,
                buffer: None,
                prefetch: None,
                current: None,
                decoded_bytes: 0,
                peak_bytes,
            })),
            dtype,
            device: device.clone(),
        })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn lock(&self) -> MutexGuard<'_, Resident> {
        self.resident.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the model holds tensor `name`.
    pub fn contains_tensor(&self, name: &str) -> bool {
        self.lock().model.group_of(name).is_some()
    }

    /// Tensor `name`, which stays coded until [`CompressedWeight::get`].
    pub fn weight(&self, name: &str) -> candle_core::Result<CompressedWeight> {
        let resident = self.lock();
        let model = &resident.model;
        let missing = || {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        };
        let group = model.group_of(name).ok_or_else(missing)?;
        let position = model.groups()[group]
            .tensors
            .iter()
            .position(|&t| model.tensors()[t].name == name)
            .ok_or_else(missing)?;
        let tensor = &model.tensors()[model.groups()[group].tensors[position]];
        Ok(CompressedWeight {
            model: self.clone(),
            name: name.to_string(),
            shape: tensor.shape.iter().map(|&d| d as usize).collect(),
            group,
            position,
        })
    }

    /// Tensor `name` decoded now, for the small tensors a model keeps
    /// decoded (norms, biases).
    pub fn tensor(&self, name: &str) -> candle_core::Result<Tensor> {
        self.weight(name)?.get()
    }

    /// A linear layer `prefix.weight` (kept coded) with the bias
    /// `prefix.bias` (decoded now) where the model has one.
    pub fn linear(&self, prefix: &str) -> candle_core::Result<CompressedLinear> {
        let weight = self.weight(&format!("{prefix}.weight"))?;
        let bias_name = format!("{prefix}.bias");
        let bias = if self.contains_tensor(&bias_name) {
            Some(self.tensor(&bias_name)?)
        } else {
            None
        };
        CompressedLinear::new(weight, bias)
    }

    /// An embedding table `prefix.weight`, kept coded.
    pub fn embedding(&self, prefix: &str) -> candle_core::Result<CompressedEmbedding> {
        CompressedEmbedding::new(self.weight(&format!("{prefix}.weight"))?)
    }

    /// What the model holds now, and the most it has held.
    pub fn memory(&self) -> CompressedMemory {
        let resident = self.lock();
        let memory = resident.model.memory();
        let element_bytes = self.dtype.size_in_bytes() as u64;
        CompressedMemory {
            compressed_bytes: memory.resident_bytes,
            buffer_bytes: memory.scratch_bytes,
            decoded_bytes: resident.decoded_bytes,
            peak_bytes: resident.peak_bytes,
            uncompressed_bytes: resident
                .model
                .tensors()
                .iter()
                .map(|t| t.shape.iter().product::<u64>() * element_bytes)
                .sum(),
        }
    }
}

fn check_matrix(weight: &CompressedWeight) -> candle_core::Result<()> {
    if weight.shape.len() != 2 {
        candle_core::bail!(
            "{} has shape {:?}; a linear or embedding weight is a matrix",
            weight.name,
            weight.shape
        )
    }
    Ok(())
}

impl Resident {
    /// Group `group`'s tensors, decoding it unless it is the current one.
    fn group(
        &mut self,
        group: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Vec<Tensor>> {
        if let Some((current, tensors)) = &self.current
            && *current == group
        {
            return Ok(tensors.clone());
        }
        // One decoded group at a time: the last one's tensors go first.
        self.current = None;
        self.decoded_bytes = 0;
        let decode = match self.prefetch.take() {
            Some(decode) if decode.group() == group => decode,
            other => {
                let buffer = match other {
                    // A decode of another group is waited for only to
                    // get its buffer back; its outcome does not matter.
                    Some(decode) => self
                        .model
                        .finish_decode(decode)
                        .ok()
                        .map(|d| d.into_buffer()),
                    None => self.buffer.take(),
                };
                let buffer = match buffer {
                    Some(buffer) => buffer,
                    None => self.model.group_buffer().map_err(candle_error)?,
                };
                self.model
                    .submit_decode(group, buffer)
                    .map_err(candle_error)?
            }
        };
        let decoded = self.model.finish_decode(decode).map_err(candle_error)?;
        let tensors = candle_tensors(&self.model, &decoded, dtype, device);
        let buffer = decoded.into_buffer();
        let tensors = tensors?;
        let next = (group + 1) % self.model.groups().len();
        if next == group {
            self.buffer = Some(buffer);
        } else {
            // A failure here is the next group's to report, when it is
            // asked for; a new buffer replaces this one then.
            self.prefetch = self.model.submit_decode(next, buffer).ok();
        }
        self.decoded_bytes = tensors
            .iter()
            .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum();
        let memory = self.model.memory();
        self.peak_bytes = self.peak_bytes.max(memory.peak_bytes + self.decoded_bytes);
        self.current = Some((group, tensors.clone()));
        Ok(tensors)
    }
}

/// The tensors of a decoded group as candle tensors of `dtype` on
/// `device`, in group order.
fn candle_tensors(
    model: &Model,
    decoded: &DecodedGroup,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Vec<Tensor>> {
    let group = decoded.group();
    decoded
        .views()
        .zip(&group.tensors)
        .map(|(view, &t)| {
            let tensor = &model.tensors()[t];
            let mut bytes = vec![0; view.bytes as usize];
            model
                .backend()
                .download(decoded.buffer(), view.offset, &mut bytes)
                .map_err(|e| candle_error(e.in_tensor(&tensor.file, &tensor.name)))?;
            let shape = view.shape.iter().map(|&d| d as usize).collect();
            candle_tensor(&tensor.file, view.name, view.dtype, shape, &bytes, device)?
                .to_dtype(dtype)
        })
        .collect()
}

/// A tensor of a [`CompressedModel`], decoded when asked for.
#[derive(Clone)]
pub struct CompressedWeight {
    model: CompressedModel,
    name: String,
    shape: Vec<usize>,
    /// Its group, and its place in the group.
    group: usize,
    position: usize,
}

impl CompressedWeight {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The tensor, decoded with the rest of its group unless that group is
    /// the one decoded last.
    pub fn get(&self) -> candle_core::Result<Tensor> {
        let model = &self.model;
        let tensors = model.lock().group(self.group, model.dtype, &model.device)?;
        Ok(tensors[self.position].clone())
    }
}

/// candle-nn's `Linear` over a weight that stays coded until it runs.
#[derive(Clone)]
pub struct CompressedLinear {
    weight: CompressedWeight,
    bias: Option<Tensor>,
}

impl CompressedLinear {
    /// Fails unless `weight` is a matrix.
    pub fn new(weight: CompressedWeight, bias: Option<Tensor>) -> candle_core::Result<Self> {
        check_matrix(&weight)?;
        Ok(CompressedLinear { weight, bias })
    }

    pub fn weight(&self) -> &CompressedWeight {
        &self.weight
    }
}

impl Module for CompressedLinear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::Linear::new(self.weight.get()?, self.bias.clone()).forward(xs)
    }
}

/// candle-nn's `Embedding` over a table that stays coded until it is
/// looked up.
#[derive(Clone)]
pub struct CompressedEmbedding {
    weight: CompressedWeight,
}

impl CompressedEmbedding {
    /// Fails unless `weight` is a matrix.
    pub fn new(weight: CompressedWeight) -> candle_core::Result<Self> {
        check_matrix(&weight)?;
        Ok(CompressedEmbedding { weight })
    }
}

impl Module for CompressedEmbedding {
    fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = self.weight.shape[1];
        candle_nn::Embedding::new(self.weight.get()?, hidden).forward(ids)
    }
}
