//! Decoding on candle's CUDA device (feature `candle-cuda`): the decoder
//! runs on the device's own stream, so candle's work queued after a decode
//! sees its output, and the decoded bytes never leave the GPU.
//!
//! A tensor loaded whole is decoded into an allocation of its own, which
//! candle then owns (`CudaStorage::wrap_cuda_slice`). A
//! [`CompressedModel`](super::CompressedModel)'s group buffer is reused, so
//! each of its tensors is copied out of it on the device instead.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage, DeviceId};
use candle_core::op::BackpropOp;
use candle_core::{DType, Storage, Tensor};

use crate::backend::cuda::CudaBackend;
use crate::backend::{Backend, DecodeJob, DeviceBuffer, DeviceTensor};

use super::candle_error;

/// The decoder on `device`'s stream, made once per device and kept for the
/// program's life, as candle keeps its devices.
pub(super) fn backend(device: &CudaDevice) -> crate::Result<&'static CudaBackend> {
    static BACKENDS: OnceLock<Mutex<HashMap<DeviceId, &'static CudaBackend>>> = OnceLock::new();
    let mut backends = BACKENDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(&backend) = backends.get(&device.id()) {
        return Ok(backend);
    }
    let backend: &'static CudaBackend =
        Box::leak(Box::new(CudaBackend::on_stream(device.cuda_stream())?));
    backends.insert(device.id(), backend);
    Ok(backend)
}

/// Calls `$make::<T>` with the element type of candle dtype `$dtype`.
macro_rules! with_element_type {
    ($dtype:expr, $make:ident($($argument:expr),*)) => {
        match $dtype {
            DType::U8 => $make::<u8>($($argument),*),
            DType::U32 => $make::<u32>($($argument),*),
            DType::I16 => $make::<i16>($($argument),*),
            DType::I32 => $make::<i32>($($argument),*),
            DType::I64 => $make::<i64>($($argument),*),
            DType::BF16 => $make::<half::bf16>($($argument),*),
            DType::F16 => $make::<half::f16>($($argument),*),
            DType::F32 => $make::<f32>($($argument),*),
            DType::F64 => $make::<f64>($($argument),*),
            DType::F8E4M3 => $make::<float8::F8E4M3>($($argument),*),
            other => Err(candle_core::Error::Msg(format!(
                "candle has no CUDA storage for {other:?}"
            ))
            .bt()),
        }
    };
}

/// Decodes `tensor` on `backend` (on `device`'s stream) into an allocation
/// that becomes the storage of a candle tensor of `dtype` and `shape`.
pub(super) fn decode_tensor(
    backend: &CudaBackend,
    tensor: &dyn DeviceTensor,
    dtype: DType,
    shape: &[usize],
    device: &CudaDevice,
) -> candle_core::Result<Tensor> {
    let elements: usize = shape.iter().product();
    if (elements * dtype.size_in_bytes()) as u64 != tensor.decoded_bytes() {
        candle_core::bail!(
            "{} decoded bytes do not make a {dtype:?} tensor of shape {shape:?}",
            tensor.decoded_bytes()
        )
    }
    // Decodes write whole words: the allocation is rounded up to one.
    let bytes = tensor
        .decoded_bytes()
        .next_multiple_of(backend.output_alignment());
    let buffer = backend.alloc(bytes).map_err(candle_error)?;
    backend
        .decode(&[DecodeJob { tensor, offset: 0 }], buffer.as_ref())
        .map_err(candle_error)?;
    let slice = CudaBackend::into_buffer(buffer)
        .ok_or_else(|| candle_core::Error::Msg("not a CUDA buffer".to_string()).bt())?
        .into_slice();
    with_element_type!(dtype, own_as(slice, elements, shape, device))
}

/// `slice`, of at least `elements` elements of `T`, as the storage of a
/// tensor of `shape`.
fn own_as<T: CudaDType + DeviceRepr>(
    slice: CudaSlice<u8>,
    elements: usize,
    shape: &[usize],
    device: &CudaDevice,
) -> candle_core::Result<Tensor> {
    let stream = device.cuda_stream();
    // cudarc's way to hand an allocation to another element type: its
    // pending work is waited for on the stream, and the new slice frees it.
    let address = slice.leak();
    // Safety: the allocation holds at least `elements` values of `T` (the
    // caller checked the decoded size), all written by the decode.
    let slice = unsafe { stream.upgrade_device_ptr::<T>(address, elements) };
    Ok(wrap(slice, shape, device))
}

/// Copies bytes `offset..` of `buffer`, a decoded group, into a new candle
/// tensor of `dtype` and `shape` on the device.
pub(super) fn copy_tensor(
    buffer: &dyn DeviceBuffer,
    offset: u64,
    dtype: DType,
    shape: &[usize],
    device: &CudaDevice,
) -> candle_core::Result<Tensor> {
    with_element_type!(dtype, copy_as(buffer, offset, shape, device))
}

fn copy_as<T: CudaDType + DeviceRepr>(
    buffer: &dyn DeviceBuffer,
    offset: u64,
    shape: &[usize],
    device: &CudaDevice,
) -> candle_core::Result<Tensor> {
    let elements: usize = shape.iter().product();
    let bytes = elements * std::mem::size_of::<T>();
    let stream = device.cuda_stream();
    // Safety: every byte is written by the copy below before it is read.
    let mut copy = unsafe { stream.alloc::<T>(elements) }.map_err(candle_core::Error::wrap)?;
    let copied = CudaBackend::with_slice(buffer, |source| {
        let start = offset as usize;
        let source = source
            .try_slice(start..start + bytes)
            .ok_or_else(|| candle_core::Error::Msg("past the group buffer's end".to_string()))?;
        // Safety: `copy` holds `elements` values of `T`, `bytes` bytes.
        let mut destination = unsafe { copy.transmute_mut::<u8>(bytes) }
            .ok_or_else(|| candle_core::Error::Msg("copy of the wrong size".to_string()))?;
        stream
            .memcpy_dtod(&source, &mut destination)
            .map_err(candle_core::Error::wrap)
    })
    .ok_or_else(|| candle_core::Error::Msg("not a CUDA buffer".to_string()))?;
    copied.map_err(|e| e.bt())?;
    Ok(wrap(copy, shape, device))
}

fn wrap<T: CudaDType>(slice: CudaSlice<T>, shape: &[usize], device: &CudaDevice) -> Tensor {
    let storage = CudaStorage::wrap_cuda_slice(slice, device.clone());
    Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
}
