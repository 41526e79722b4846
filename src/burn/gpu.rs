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
use crate::backend::{Backend, DecodeJob, DeviceBuffer, DeviceTensor, backend_error, unavailable};
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
        let uploaded = self.upload(file, stored)?;
        let decoded_bytes = uploaded.decoded_bytes();
        let elements: usize = shape.iter().product();
        let written = if widened {
            elements as u64 * 4
        } else {
            decoded_bytes.next_multiple_of(self.backend.output_alignment())
        };
        let tensor = Tensor::<D>::empty(shape, (&self.device, dtype));
        let widening = widened.then_some(Widening {
            dtype: source.dtype,
            elements: elements as u64,
            transposed,
        });
        self.write_into(tensor, written, |resource| {
            self.fill(resource, uploaded.as_ref(), widening, None)
        })
    }

    /// Writes `uploaded` decoded into `resource`: as decoded, or where
    /// `widening`, through `scratch` (or a buffer of its own) widened to
    /// F32.
    fn fill(
        &self,
        resource: &cubecl_wgpu::WgpuResource,
        uploaded: &dyn DeviceTensor,
        widening: Option<Widening>,
        scratch: Option<&dyn DeviceBuffer>,
    ) -> Result<()> {
        let decoded_bytes = uploaded.decoded_bytes();
        let Some(widening) = widening else {
            if decoded_bytes > 0 {
                let out = GpuBuffer::new(resource.buffer.clone(), resource.buffer.size());
                self.backend.decode(
                    &[DecodeJob {
                        tensor: uploaded,
                        offset: resource.offset,
                    }],
                    &out,
                )?;
            }
            return Ok(());
        };
        let owned;
        let scratch = match scratch {
            Some(scratch) => scratch,
            None => {
                owned = self
                    .backend
                    .alloc(decoded_bytes.next_multiple_of(4).max(4))?;
                owned.as_ref()
            }
        };
        if decoded_bytes > 0 {
            self.backend.decode(
                &[DecodeJob {
                    tensor: uploaded,
                    offset: 0,
                }],
                scratch,
            )?;
        }
        let narrow = WgpuBackend::buffer(scratch)
            .ok_or_else(|| backend_error(NAME, "the scratch buffer is not wgpu's"))?;
        self.backend.device().widen(
            widening.dtype,
            narrow,
            &resource.buffer,
            resource.offset,
            widening.elements,
            widening.transposed,
        )
    }

    /// Tensor `stored` of `file` on the device, coded (or raw, as stored).
    pub(super) fn upload(
        &self,
        file: &CompressedFile,
        stored: &StoredTensor,
    ) -> Result<Box<dyn DeviceTensor>> {
        match &stored.storage {
            Storage::Raw => self.backend.upload_raw(file.stored_bytes(stored)),
            Storage::Coded(coded) => {
                let index = file.block_index(&stored.source.name, coded)?;
                self.backend.upload(&file.view(coded), &index)
            }
        }
    }

    /// Runs `write` on the wgpu buffer behind burn tensor `tensor` once it
    /// is known to hold `written` bytes, and gives the tensor back. Taking
    /// the buffer submits cubecl's pending work first, so what burn has
    /// asked of the tensor runs before the write; holding it keeps cubecl
    /// from moving or reusing it.
    pub(super) fn write_into<const D: usize>(
        &self,
        tensor: Tensor<D>,
        written: u64,
        write: impl FnOnce(&cubecl_wgpu::WgpuResource) -> Result<()>,
    ) -> Result<Tensor<D>> {
        let primitive = tensor.try_into_primitive::<Wgpu>().map_err(|e| {
            backend_error(
                NAME,
                format!("the burn tensor is not on a wgpu device: {e:?}"),
            )
        })?;
        let managed = primitive
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(primitive.handle.clone())
            .map_err(|e| backend_error(NAME, format!("burn's buffer: {e:?}")))?;
        let resource = managed.resource();
        let room = primitive.handle.size();
        if written > room || resource.size > room {
            return Err(backend_error(
                NAME,
                format!("burn's {room}-byte allocation cannot take the {written} bytes written"),
            ));
        }
        write(resource)?;
        drop(managed);
        Ok(Tensor::from_primitive::<Wgpu>(primitive))
    }

    /// Decodes `uploaded`, a `[rows, columns]` matrix of `dtype`, through
    /// `scratch` into `tensor` (F32, at least `rows × columns` elements) as
    /// its `[columns, rows]` F32 transpose, and gives the tensor back.
    pub(super) fn decode_transposed_into(
        &self,
        tensor: Tensor<1>,
        uploaded: &dyn DeviceTensor,
        dtype: safetensors::Dtype,
        [rows, columns]: [u64; 2],
        scratch: &dyn DeviceBuffer,
    ) -> Result<Tensor<1>> {
        let widening = Widening {
            dtype,
            elements: rows * columns,
            transposed: Some([rows, columns]),
        };
        self.write_into(tensor, widening.elements * 4, |resource| {
            self.fill(resource, uploaded, Some(widening), Some(scratch))
        })
    }
}

/// A decoded tensor made F32 on its way into burn's buffer.
#[derive(Clone, Copy)]
struct Widening {
    dtype: safetensors::Dtype,
    elements: u64,
    /// `[rows, columns]` of a matrix written transposed.
    transposed: Option<[u64; 2]>,
}
