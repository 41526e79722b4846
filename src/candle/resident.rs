//! Weights that stay compressed (the DFloat11 mode): a model's tensors are
//! uploaded coded, as [`runtime::Model`](crate::runtime::Model) keeps them,
//! and a layer's weights are decoded together into a reused group buffer
//! right before the first module of that layer runs.
//!
//! A module copies its weight out of the buffer as a candle tensor each
//! time it runs, and drops it when it is done, so the model holds its coded
//! tensors, the buffer and one weight at a time. Where the backend decodes
//! asynchronously (a GPU), a second buffer takes the decode of the next
//! layer, which runs while the caller computes on this one.
//! [`CompressedLinear`] and [`CompressedEmbedding`] compute exactly what
//! candle-nn's `Linear` and `Embedding` do, on the same bits.
//! [`CompressedModel::memory`] says what the model holds.
//!
//! Decoded bytes become candle tensors as candle's safetensors loading
//! makes them (see [`super::CompressedTensors`]), converted to the model's
//! dtype.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use candle_core::{DType, Device, Module, Tensor};
use serde::Serialize;

use crate::backend::{Backend, CpuBackend, DeviceBuffer};
use crate::error::Result;
use crate::runtime::{GroupBuffer, GroupDecode, Model, ModelOptions, ModelTensor};

use super::{candle_error, filled_tensor};

/// A compressed checkpoint resident in its coded form, whose tensors are
/// decoded a group (a layer) at a time. Clones share the model.
#[derive(Clone)]
pub struct CompressedModel {
    resident: Arc<Mutex<Resident>>,
    dtype: DType,
    device: Device,
}

/// The model, its buffers, and the group decoded last.
struct Resident {
    model: Model<'static>,
    /// Buffers no decode holds.
    spare: Vec<GroupBuffer>,
    /// The group decoded last, and the buffer it is in.
    current: Option<(usize, GroupBuffer)>,
    /// The decode of the group after the current one.
    prefetch: Option<GroupDecode>,
    /// The largest weight handed out, in the model's dtype.
    largest_weight_bytes: u64,
}

/// What a [`CompressedModel`] holds, in bytes.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CompressedMemory {
    /// The coded tensors (and those stored raw), resident for the model's
    /// life.
    pub compressed_bytes: u64,
    /// The group buffers decodes write into, each the size of the model's
    /// largest group: one, or two where decodes are asynchronous.
    pub buffer_bytes: u64,
    /// The largest weight a module has held while it ran, in the model's
    /// dtype.
    pub weight_bytes: u64,
    /// What the model holds at most: the three above.
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
    /// as `dtype` on `device`. On a CUDA device (feature `candle-cuda`) the
    /// coded tensors are held in device memory and decoded on the GPU, on
    /// the device's stream; on any other device they are held in host
    /// memory and decoded on the CPU, and candle copies each weight to the
    /// device.
    pub fn open(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        #[cfg(feature = "candle-cuda")]
        if let Device::Cuda(cuda_device) = device {
            return Self::with_backend(path, super::cuda::backend(cuda_device)?, dtype, device);
        }
        Self::with_backend(path, cpu_backend(), dtype, device)
    }

    /// Opens a compressed file or checkpoint directory resident on
    /// `backend`, which decodes each group. The decoded bytes reach
    /// `device` through the host, unless `backend` is the CUDA backend and
    /// `device` candle's CUDA device.
    pub fn with_backend(
        path: &Path,
        backend: &'static dyn Backend,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let model = Model::open(path, backend, ModelOptions::default())?;
        Ok(CompressedModel {
            resident: Arc::new(Mutex::new(Resident {
                model,
                spare: Vec::new(),
                current: None,
                prefetch: None,
                largest_weight_bytes: 0,
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
    /// decoded (norms, biases); what the caller keeps is not counted in
    /// [`memory`](Self::memory).
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

    /// What the model holds, at most.
    pub fn memory(&self) -> CompressedMemory {
        let resident = self.lock();
        let memory = resident.model.memory();
        let element_bytes = self.dtype.size_in_bytes() as u64;
        CompressedMemory {
            compressed_bytes: memory.resident_bytes,
            buffer_bytes: memory.scratch_bytes,
            weight_bytes: resident.largest_weight_bytes,
            peak_bytes: memory.peak_bytes + resident.largest_weight_bytes,
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
    /// A buffer no decode holds, allocated if there is none.
    fn spare_buffer(&mut self) -> candle_core::Result<GroupBuffer> {
        match self.spare.pop() {
            Some(buffer) => Ok(buffer),
            None => self.model.group_buffer().map_err(candle_error),
        }
    }

    /// Makes group `group` the current one, decoding it unless it is.
    fn decode(&mut self, group: usize) -> candle_core::Result<()> {
        if self.current.as_ref().is_some_and(|(g, _)| *g == group) {
            return Ok(());
        }
        if let Some((_, buffer)) = self.current.take() {
            self.spare.push(buffer);
        }
        let decode = match self.prefetch.take() {
            Some(decode) if decode.group() == group => decode,
            other => {
                // A decode of another group is waited for only to get its
                // buffer back; its outcome does not matter.
                if let Some(decode) = other
                    && let Ok(decoded) = self.model.finish_decode(decode)
                {
                    self.spare.push(decoded.into_buffer());
                }
                let buffer = self.spare_buffer()?;
                self.model
                    .submit_decode(group, buffer)
                    .map_err(candle_error)?
            }
        };
        let decoded = self.model.finish_decode(decode).map_err(candle_error)?;
        self.current = Some((group, decoded.into_buffer()));
        let next = (group + 1) % self.model.groups().len();
        if next != group && self.model.backend().decodes_asynchronously() {
            let buffer = self.spare_buffer()?;
            // A failure here is the next group's to report, when it is
            // asked for; a new buffer replaces this one then.
            self.prefetch = self.model.submit_decode(next, buffer).ok();
        }
        Ok(())
    }

    /// Tensor `position` of group `group`, copied out of the group buffer
    /// as a candle tensor of `dtype` on `device`.
    fn tensor(
        &mut self,
        group: usize,
        position: usize,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.decode(group)?;
        let Some((_, buffer)) = &self.current else {
            candle_core::bail!("group {group} did not decode")
        };
        let model = &self.model;
        let layout = &model.groups()[group];
        let tensor = &model.tensors()[layout.tensors[position]];
        let offset = layout.offsets[position];
        let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
        let decoded = copy_out(model, buffer.device_buffer(), offset, tensor, shape, device)?
            .to_dtype(dtype)?;
        self.largest_weight_bytes = self
            .largest_weight_bytes
            .max((decoded.elem_count() * dtype.size_in_bytes()) as u64);
        Ok(decoded)
    }
}

/// Bytes `offset..` of `buffer`, where `tensor` was decoded, as a candle
/// tensor of its own dtype on `device`: copied on the device where the
/// backend is candle's CUDA device, else through the host.
fn copy_out(
    model: &Model,
    buffer: &dyn DeviceBuffer,
    offset: u64,
    tensor: &ModelTensor,
    shape: Vec<usize>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    #[cfg(feature = "candle-cuda")]
    if let Device::Cuda(cuda_device) = device
        && model
            .backend()
            .as_any()
            .is::<crate::backend::cuda::CudaBackend>()
    {
        return super::cuda::copy_tensor(
            buffer,
            offset,
            DType::try_from(tensor.dtype)?,
            &shape,
            cuda_device,
        );
    }
    filled_tensor(
        &tensor.file,
        &tensor.name,
        tensor.dtype,
        shape,
        device,
        |out| {
            model
                .backend()
                .download(buffer, offset, out)
                .map_err(|e| candle_error(e.in_tensor(&tensor.file, &tensor.name)))
        },
    )
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
    /// the one decoded last: a new tensor each call, which the model does
    /// not keep.
    pub fn get(&self) -> candle_core::Result<Tensor> {
        let model = &self.model;
        model
            .lock()
            .tensor(self.group, self.position, model.dtype, &model.device)
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
