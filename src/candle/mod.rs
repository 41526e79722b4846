//! Compressed checkpoints in candle (feature `candle`), two ways:
//!
//! - [`var_builder`] / [`CompressedTensors`]: a `VarBuilder` backend that
//!   decodes each tensor when a model asks for it, so every
//!   candle-transformers model loads from `.ecf.safetensors` shards as it
//!   loads from safetensors;
//! - [`CompressedModel`]: the weights stay coded, and a layer's are decoded
//!   just before its modules ([`CompressedLinear`], [`CompressedEmbedding`])
//!   run.
//!
//! A decoded tensor is made a candle tensor exactly as candle's own
//! safetensors loading makes one (`Load` on a safetensors view): the same
//! dtypes, the same conversion (`to_dtype`) and shape check in the
//! `VarBuilder`, the same error for a dtype candle lacks (F8 E5M2). A
//! tensor the `VarBuilder` decodes on the CPU is also checked against the
//! checksum recorded at compression; one decoded on a GPU by the decoder's
//! own validation of every block, as the bytes stay where they are. A
//! `CompressedModel` checks as the runtime does: every block, and the
//! checksums on each layer's first decode.
//!
//! On candle's CPU device the decoding is on the CPU. With the
//! `candle-cuda` feature, on a CUDA device it is on the GPU, on the
//! device's stream, into memory candle then owns (see `cuda.rs`);
//! [`CompressedModel::with_backend`] takes any other backend, whose decoded
//! bytes reach candle through the host.

use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::{SimpleBackend, VarBuilder};
use safetensors::tensor::TensorView;

use crate::container::{CompressedCheckpoint, Storage, cpu_decoder};
use crate::error::{Error, Result};

#[cfg(feature = "candle-cuda")]
mod cuda;
mod resident;

pub use resident::{
    CompressedEmbedding, CompressedLinear, CompressedMemory, CompressedModel, CompressedWeight,
};

/// The tensors of a compressed file, or of every compressed shard of a
/// checkpoint directory, by name, as a `VarBuilder` backend.
pub struct CompressedTensors {
    checkpoint: CompressedCheckpoint,
}

impl CompressedTensors {
    /// Opens `path`: a compressed file, or a directory whose
    /// `*.ecf.safetensors` shards are read (what `ecf compress DIR` writes).
    pub fn open(path: &Path) -> Result<Self> {
        Ok(CompressedTensors {
            checkpoint: CompressedCheckpoint::open(path)?,
        })
    }

    /// The names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.checkpoint.names()
    }

    /// Tensor `name` decoded on the CPU, as candle's safetensors loading
    /// would make it from the original file, on `device`.
    pub fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let (file, tensor) = self.checkpoint.get(name).ok_or_else(|| {
            candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }
            .bt()
        })?;
        let (dtype, shape) = (tensor.source.dtype, tensor.source.shape.clone());
        if let Storage::Raw = tensor.storage {
            let bytes = file.stored_bytes(tensor);
            return candle_tensor(file.path(), name, dtype, shape, bytes, device);
        }
        #[cfg(feature = "candle-cuda")]
        if let (Device::Cuda(cuda_device), Storage::Coded(coded)) = (device, &tensor.storage) {
            use crate::backend::Backend;
            let in_tensor = |e: Error| candle_error(e.in_tensor(file.path(), name));
            let backend = cuda::backend(cuda_device).map_err(candle_error)?;
            let index = file.block_index(name, coded).map_err(in_tensor)?;
            let uploaded = backend
                .upload(&file.view(coded), &index)
                .map_err(in_tensor)?;
            return cuda::decode_tensor(
                backend,
                uploaded.as_ref(),
                DType::try_from(dtype)?,
                &shape,
                cuda_device,
            );
        }
        let decoder = cpu_decoder();
        filled_tensor(file.path(), name, dtype, shape, device, |out| {
            file.read_tensor_into(tensor, &decoder, out)
                .map_err(candle_error)
        })
    }
}

/// A tensor of `dtype` and `shape` on `device` whose bytes `fill` writes:
/// for the dtypes candle stores as themselves, straight into its storage;
/// for the others (F8), into bytes candle then loads as it loads
/// safetensors.
fn filled_tensor(
    path: &Path,
    name: &str,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    device: &Device,
    fill: impl FnOnce(&mut [u8]) -> candle_core::Result<()>,
) -> candle_core::Result<Tensor> {
    let elements: usize = shape.iter().product();
    match dtype {
        safetensors::Dtype::BF16 => {
            let mut values = zeroed::<half::bf16>(elements)?;
            fill(bytemuck::cast_slice_mut(&mut values))?;
            Tensor::from_vec(values, shape, device)
        }
        safetensors::Dtype::F16 => {
            let mut values = zeroed::<half::f16>(elements)?;
            fill(bytemuck::cast_slice_mut(&mut values))?;
            Tensor::from_vec(values, shape, device)
        }
        safetensors::Dtype::F32 => {
            let mut values = zeroed::<f32>(elements)?;
            fill(bytemuck::cast_slice_mut(&mut values))?;
            Tensor::from_vec(values, shape, device)
        }
        _ => {
            let mut bytes = zeroed::<u8>((elements * dtype.bitsize()).div_ceil(8))?;
            fill(&mut bytes)?;
            candle_tensor(path, name, dtype, shape, &bytes, device)
        }
    }
}

/// `len` zeroed values, or an error where they do not fit in memory.
fn zeroed<T: bytemuck::Pod>(len: usize) -> candle_core::Result<Vec<T>> {
    let mut values: Vec<T> = Vec::new();
    values
        .try_reserve_exact(len)
        .map_err(|_| candle_core::Error::Msg(format!("cannot allocate {len} values")).bt())?;
    values.resize(len, T::zeroed());
    Ok(values)
}

/// Decoded bytes as candle's safetensors loading makes a tensor of them.
fn candle_tensor(
    path: &Path,
    name: &str,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: &[u8],
    device: &Device,
) -> candle_core::Result<Tensor> {
    let view = TensorView::new(dtype, shape, bytes).map_err(|e| {
        candle_error(Error::corrupt(
            path,
            Some(name),
            format!("decoded bytes do not fit its dtype and shape: {e}"),
        ))
    })?;
    view.load(device)
}

/// A `VarBuilder` of the compressed file or checkpoint directory at
/// `path`, whose tensors come as `dtype` on `device`.
pub fn var_builder(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let tensors = CompressedTensors::open(path)?;
    Ok(VarBuilder::from_backend(
        Box::new(tensors),
        dtype,
        device.clone(),
    ))
}

impl SimpleBackend for CompressedTensors {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, device)?.to_dtype(dtype)?;
        if tensor.shape() != &shape {
            Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: shape,
                got: tensor.shape().clone(),
            }
            .bt())?
        }
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, device)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.checkpoint.contains(name)
    }
}

/// The crate's error as candle's, with its message.
fn candle_error(error: Error) -> candle_core::Error {
    candle_core::Error::Msg(error.to_string()).bt()
}
