//! One wgpu device for ecfloat's decoder and burn: the WGSL decoder writes
//! straight into the buffers of burn's tensors, so decoded bytes never
//! leave the GPU.
//!
//! burn (through cubecl) takes over a device ecfloat opened with every
//! feature and limit of its adapter ([`WgpuBackend::shared`]); both submit
//! to the one queue, so work runs in the order it is submitted. A burn
//! tensor's buffer is a slice of a larger buffer of cubecl's, at an offset
//! aligned to the device's binding alignment and padded to it: the
//! decoder, which stores whole 4-byte words, writes the slice and at most
//! its padding.

use std::sync::Arc;

use ::burn::backend::Wgpu;
use ::burn::backend::wgpu::{RuntimeOptions, WgpuSetup};
use ::burn::tensor::{DType, Device, Tensor};
use cubecl_wgpu::{AutoCompiler, WgpuServer};

use super::burn_dtype;
use crate::backend::gpu::GpuBuffer;
use crate::backend::wgpu::WgpuBackend;
use crate::backend::{Backend, DecodeJob, DeviceTensor, backend_error, unavailable};
use crate::container::{CompressedCheckpoint, CompressedFile, Storage, StoredTensor};
use crate::error::{Error, Result};

const NAME: &str = "wgpu";

/// A wgpu device that ecfloat's decoder and burn share. Clones share it.
#[derive(Clone)]
pub struct SharedDevice {
    backend: Arc<WgpuBackend>,
    device: Device,
}

impl std::fmt::Debug for SharedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDevice")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl SharedDevice {
    /// Opens the highest-performance adapter and hands its device to burn.
    pub fn open() -> Result<Self> {
        let backend = WgpuBackend::shared()?;
        let wgpu_device = backend.device();
        let (instance, adapter) = wgpu_device.origin();
        let setup = WgpuSetup {
            instance: instance.clone(),
            adapter: adapter.clone(),
            device: wgpu_device.device().clone(),
            queue: wgpu_device.queue().clone(),
            backend: adapter.get_info().backend,
        };
        let device = cubecl_wgpu::try_init_device(setup, RuntimeOptions::default())
            .map_err(|e| unavailable(NAME, format!("burn cannot take over the device: {e}")))?;
        Ok(SharedDevice {
            backend: Arc::new(backend),
            device: Device::from(device),
        })
    }

    /// burn's device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// ecfloat's backend on the same device.
    pub fn backend(&self) -> &WgpuBackend {
        &self.backend
    }

    /// Float tensor `name` of `checkpoint`, decoded by the WGSL decoder
    /// into a new burn tensor of `dtype` on the shared device: the stored dtype,
    /// or F32 from BF16 or F16, widened on the device exactly as burn's
    /// own loading converts on the host (burn-store's `FloatCastAdapter`).
    /// The decoder checks every block as it decodes; a failing one is an
    /// error naming the file and the tensor.
    pub fn decode_tensor<const D: usize>(
        &self,
        checkpoint: &CompressedCheckpoint,
        name: &str,
        dtype: DType,
    ) -> Result<Tensor<D>> {
        let (file, stored) = checkpoint.get(name).ok_or_else(|| {
            Error::Usage(format!("tensor {name} is not in the compressed checkpoint"))
        })?;
        self.decode_stored(file, stored, dtype, false)
            .map_err(|e| e.in_tensor(file.path(), name))
    }

    /// [`decode_tensor`](Self::decode_tensor) of a tensor of `file`; with
    /// `transpose`, a matrix decoded as its transpose, in F32 (as burn's
    /// `Linear` holds a PyTorch linear weight).
    pub(super) fn decode_stored<const D: usize>(
        &self,
        file: &CompressedFile,
        stored: &StoredTensor,
        dtype: DType,
        transpose: bool,
    ) -> Result<Tensor<D>> {
        let source = &stored.source;
        let stored_dtype = burn_dtype(source.dtype)
            .ok_or_else(|| backend_error(NAME, format!("burn has no {:?} dtype", source.dtype)))?;
        let mut shape: [usize; D] =
            source
                .shape
                .clone()
                .try_into()
                .map_err(|shape: Vec<usize>| {
                    backend_error(
                        NAME,
                        format!("a tensor of {} dimensions asked for as {D}", shape.len()),
                    )
                })?;
        if !stored_dtype.is_float() || !dtype.is_float() {
            return Err(backend_error(
                NAME,
                format!(
                    "a {stored_dtype:?} tensor asked for as {dtype:?}: only float tensors are decoded into burn's"
                ),
            ));
        }
        let widened = match (stored_dtype, dtype) {
            (stored, wanted) if stored == wanted => false,
            (DType::BF16 | DType::F16, DType::F32) => true,
            (stored, wanted) => {
                return Err(backend_error(
                    NAME,
                    format!(
                        "a {stored:?} tensor is decoded as {stored:?}, or widened to F32, not made {wanted:?}"
                    ),
                ));
            }
        };
        let transposed = match (transpose, shape.as_slice()) {
            (false, _) => None,
            (true, &[rows, columns]) if dtype == DType::F32 => {
                shape.swap(0, 1);
                Some([rows as u64, columns as u64])
            }
            (true, _) => {
                return Err(backend_error(
                    NAME,
                    format!(
                        "only a matrix made F32 is decoded transposed, not a {D}-dimensional {dtype:?} tensor"
                    ),
                ));
            }
        };
        let widened = widened || transposed.is_some();
        if !self.device.supports_dtype(dtype) {
            return Err(backend_error(
                NAME,
                format!("the device holds no {dtype:?} tensors (load it as F32)"),
            ));
        }
        let uploaded: Box<dyn DeviceTensor> = match &stored.storage {
            Storage::Raw => self.backend.upload_raw(file.stored_bytes(stored))?,
            Storage::Coded(coded) => {
                let index = file.block_index(&source.name, coded)?;
                self.backend.upload(&file.view(coded), &index)?
            }
        };
        let decoded_bytes = uploaded.decoded_bytes();
        let elements: usize = shape.iter().product();

        let tensor = Tensor::<D>::empty(shape, (&self.device, dtype));
        let primitive = tensor.try_into_primitive::<Wgpu>().map_err(|e| {
            backend_error(
                NAME,
                format!("the burn tensor is not on a wgpu device: {e:?}"),
            )
        })?;
        // Holding the resource keeps cubecl from moving or reusing it, and
        // taking it submits cubecl's pending work first.
        let managed = primitive
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(primitive.handle.clone())
            .map_err(|e| backend_error(NAME, format!("burn's buffer: {e:?}")))?;
        let resource = managed.resource();
        let room = primitive.handle.size();
        let written = if widened {
            elements as u64 * 4
        } else {
            decoded_bytes.next_multiple_of(self.backend.output_alignment())
        };
        if written > room || resource.size > room {
            return Err(backend_error(
                NAME,
                format!("burn's {room}-byte allocation cannot take the {written} bytes written"),
            ));
        }
        if widened {
            let narrow = self
                .backend
                .alloc(decoded_bytes.next_multiple_of(4).max(4))?;
            self.backend.decode(
                &[DecodeJob {
                    tensor: uploaded.as_ref(),
                    offset: 0,
                }],
                narrow.as_ref(),
            )?;
            let narrow = WgpuBackend::buffer(narrow.as_ref())
                .ok_or_else(|| backend_error(NAME, "the scratch buffer is not wgpu's"))?;
            self.backend.device().widen(
                source.dtype,
                narrow,
                &resource.buffer,
                resource.offset,
                elements as u64,
                transposed,
            )?;
        } else if decoded_bytes > 0 {
            let out = GpuBuffer::new(resource.buffer.clone(), resource.buffer.size());
            self.backend.decode(
                &[DecodeJob {
                    tensor: uploaded.as_ref(),
                    offset: resource.offset,
                }],
                &out,
            )?;
        }
        drop(managed);
        Ok(Tensor::from_primitive::<Wgpu>(primitive))
    }
}
