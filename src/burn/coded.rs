//! Weights kept coded (the DFloat11 mode): a linear layer whose weight stays
//! in its compressed form and is decoded just before each `forward`, into
//! one buffer every kept-coded weight of a [`CodedWeights`] reuses.
//!
//! On a [`SharedDevice`] the coded blocks are uploaded once and the WGSL
//! decoder decodes them on the GPU, widened to F32 and laid out as burn's
//! `Linear` holds its weight (`[in, out]`) straight into a burn tensor's
//! buffer. On any other burn device (burn's CPU backend, ndarray, among
//! them) the coded bytes stay in host memory, the CPU decoder decodes them
//! and checks them against the checksum recorded at compression, and the
//! weight is handed to the device as burn's own loading hands it.
//!
//! The F32 weight a forward computes with has the bits burn-store's
//! loading of the original gives with `PyTorchToBurnAdapter` and
//! `FloatCastAdapter::to(F32)`, so a model with its linear layers kept
//! coded computes what the same model loaded decoded computes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ::burn::backend::Wgpu;
use ::burn::module::{Module, Param};
use ::burn::tensor::module::linear;
use ::burn::tensor::{DType, Device, Tensor, TensorData};
use serde::Serialize;

use super::SharedDevice;
use crate::backend::{Backend, DeviceBuffer, DeviceTensor, backend_error};
use crate::container::{CompressedCheckpoint, cpu_decoder};
use crate::error::{Error, Result};

const NAME: &str = "wgpu";

/// A compressed checkpoint whose weights [`CodedLinear`] layers keep coded.
/// Clones share the checkpoint, the coded weights and the decode buffer.
#[derive(Clone)]
pub struct CodedWeights {
    inner: Arc<Inner>,
}

struct Inner {
    checkpoint: CompressedCheckpoint,
    place: Place,
    state: Mutex<State>,
}

/// Where the coded weights live and are decoded.
enum Place {
    /// In host memory, decoded by the CPU decoder, then handed to `device`.
    Host { device: Device },
    /// On the shared GPU, decoded by the WGSL decoder.
    Shared { shared: SharedDevice },
}

#[derive(Default)]
struct State {
    /// Every weight a layer keeps coded, by name: its coded blocks on the
    /// GPU where the place is shared.
    weights: HashMap<String, KeptWeight>,
    buffers: Buffers,
}

/// What every weight is decoded into.
#[derive(Default)]
struct Buffers {
    /// The decoded bytes of the weight decoded last, as stored (host), or
    /// the GPU buffer the decoder writes them into before they are widened.
    host_scratch: Vec<u8>,
    device_scratch: Option<Box<dyn DeviceBuffer>>,
    /// The burn tensor each weight is widened into on the GPU, as many F32
    /// elements as the largest weight.
    wide: Option<Tensor<1>>,
}

struct KeptWeight {
    dtype: safetensors::Dtype,
    /// `[out, in]`, as the checkpoint stores it.
    shape: [usize; 2],
    coded_bytes: u64,
    uploaded: Option<Box<dyn DeviceTensor>>,
}

/// What a [`CodedWeights`] holds for its kept-coded weights, in bytes.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct CodedMemory {
    /// The coded weights (and any stored raw), held for the model's life:
    /// in device memory on a shared device, in host memory otherwise.
    pub coded_bytes: u64,
    /// The buffers each weight is decoded into, each the size of the
    /// largest weight: the decoder's output, as stored, and (on a shared
    /// device) the F32 weight. On the host the F32 weight is a tensor
    /// burn holds for one forward.
    pub buffer_bytes: u64,
    /// The same weights decoded, as F32: what a model loaded decoded holds
    /// for them.
    pub decoded_bytes: u64,
}

impl std::fmt::Debug for CodedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.inner.place {
            Place::Host { device } => format!("host, for {device:?}"),
            Place::Shared { shared } => format!("{:?}", shared.device()),
        };
        f.debug_struct("CodedWeights")
            .field("place", &place)
            .finish_non_exhaustive()
    }
}

impl CodedWeights {
    /// Opens a compressed file or checkpoint directory whose weights stay
    /// coded in host memory and are decoded by the CPU decoder for layers
    /// on `device`.
    pub fn open(path: &std::path::Path, device: &Device) -> Result<Self> {
        Ok(Self::new(
            CompressedCheckpoint::open(path)?,
            Place::Host {
                device: device.clone(),
            },
        ))
    }

    /// Opens a compressed file or checkpoint directory whose weights are
    /// uploaded coded to `shared` and decoded there by the WGSL decoder.
    pub fn open_shared(path: &std::path::Path, shared: &SharedDevice) -> Result<Self> {
        Ok(Self::new(
            CompressedCheckpoint::open(path)?,
            Place::Shared {
                shared: shared.clone(),
            },
        ))
    }

    fn new(checkpoint: CompressedCheckpoint, place: Place) -> Self {
        CodedWeights {
            inner: Arc::new(Inner {
                checkpoint,
                place,
                state: Mutex::default(),
            }),
        }
    }

    /// burn's device the layers compute on.
    pub fn device(&self) -> &Device {
        match &self.inner.place {
            Place::Host { device } => device,
            Place::Shared { shared } => shared.device(),
        }
    }

    /// A linear layer of `input` features to `output` whose weight is the
    /// checkpoint's `{prefix}.weight`, kept coded, stored as PyTorch stores
    /// it (`[output, input]`; BF16, F16 or F32). Its bias, where `bias`,
    /// is an ordinary parameter, zeros until a store loads
    /// `{prefix}.bias` into it.
    pub fn linear(
        &self,
        prefix: &str,
        input: usize,
        output: usize,
        bias: bool,
    ) -> Result<CodedLinear> {
        let name = format!("{prefix}.weight");
        let (file, stored) = self
            .inner
            .checkpoint
            .get(&name)
            .ok_or_else(|| Error::Usage(format!("tensor {name} is not in the checkpoint")))?;
        let source = &stored.source;
        let problem = if !matches!(
            source.dtype,
            safetensors::Dtype::BF16 | safetensors::Dtype::F16 | safetensors::Dtype::F32
        ) {
            Some(format!(
                "a {:?} weight cannot be kept coded: BF16, F16 and F32 can",
                source.dtype
            ))
        } else if source.shape != [output, input] {
            Some(format!(
                "its shape is {:?}; a linear layer of {input} inputs and {output} outputs \
                 stores [{output}, {input}]",
                source.shape
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::corrupt(file.path(), Some(&name), problem));
        }
        let mut state = self.state();
        if !state.weights.contains_key(&name) {
            let uploaded = match &self.inner.place {
                Place::Host { .. } => None,
                Place::Shared { shared } => Some(
                    shared
                        .upload(file, stored)
                        .map_err(|e| e.in_tensor(file.path(), &name))?,
                ),
            };
            let coded_bytes = match &uploaded {
                Some(uploaded) => uploaded.resident_bytes(),
                None => file.stored_bytes(stored).len() as u64,
            };
            state.weights.insert(
                name.clone(),
                KeptWeight {
                    dtype: source.dtype,
                    shape: [output, input],
                    coded_bytes,
                    uploaded,
                },
            );
        }
        drop(state);
        let bias = bias.then(|| Param::from_tensor(Tensor::zeros([output], self.device())));
        Ok(CodedLinear {
            bias,
            weight: CodedWeight {
                weights: self.clone(),
                name,
                input,
                output,
            },
        })
    }

    /// What the kept-coded weights hold.
    pub fn memory(&self) -> CodedMemory {
        let state = self.state();
        let coded_bytes = state.weights.values().map(|w| w.coded_bytes).sum();
        let decoded_bytes = state
            .weights
            .values()
            .map(|w| (w.shape[0] * w.shape[1] * 4) as u64)
            .sum();
        let buffers = &state.buffers;
        let wide_bytes = buffers
            .wide
            .as_ref()
            .map_or(0, |wide| (wide.shape().num_elements() * 4) as u64);
        let scratch_bytes = buffers
            .device_scratch
            .as_ref()
            .map_or(buffers.host_scratch.capacity() as u64, |scratch| {
                scratch.len()
            });
        CodedMemory {
            coded_bytes,
            buffer_bytes: scratch_bytes + wide_bytes,
            decoded_bytes,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// burn's `Linear::forward` of `input` with weight `name` decoded into
    /// the reused buffer. The state stays locked until the forward is
    /// submitted to the device, so a forward on another thread cannot
    /// overwrite the weight before this one has read it.
    fn forward<const D: usize>(
        &self,
        name: &str,
        input: Tensor<D>,
        bias: Option<Tensor<1>>,
    ) -> Result<Tensor<D>> {
        let mut state = self.state();
        let weight = self.decode(&mut state, name, false)?;
        let output = linear(input, weight, bias);
        if let Place::Shared { .. } = &self.inner.place {
            let primitive = output.clone().try_into_primitive::<Wgpu>().map_err(|e| {
                backend_error(
                    NAME,
                    format!("the burn tensor is not on a wgpu device: {e:?}"),
                )
            })?;
            primitive
                .client
                .flush()
                .map_err(|e| backend_error(NAME, format!("submitting the forward: {e:?}")))
                .map_err(|e| e.in_tensor(self.path_of(name), name))?;
        }
        drop(state);
        Ok(output)
    }

    /// Weight `name`, decoded as F32 and laid out `[in, out]`: into the
    /// reused buffer (valid until the next decode), or where `fresh`, into
    /// a tensor of its own.
    fn decode(&self, state: &mut State, name: &str, fresh: bool) -> Result<Tensor<2>> {
        let weight = state
            .weights
            .get(name)
            .ok_or_else(|| Error::Usage(format!("tensor {name} is not kept coded")))?;
        let [output, input] = weight.shape;
        match &self.inner.place {
            Place::Host { device } => {
                let (file, stored) = self.inner.checkpoint.get(name).ok_or_else(|| {
                    Error::Usage(format!("tensor {name} is not in the checkpoint"))
                })?;
                let scratch = &mut state.buffers.host_scratch;
                scratch.clear();
                scratch.resize(stored.source.len(), 0);
                file.read_tensor_into(stored, &cpu_decoder(), scratch)?;
                let wide = widen_transposed(weight.dtype, scratch, [output, input]);
                Ok(Tensor::from_data(
                    TensorData::new(wide, [input, output]),
                    (device, DType::F32),
                ))
            }
            Place::Shared { shared } => {
                let uploaded = weight
                    .uploaded
                    .as_deref()
                    .ok_or_else(|| backend_error(NAME, "the weight was not uploaded"))?;
                let elements = |w: &KeptWeight| w.shape[0] * w.shape[1];
                let largest = Largest {
                    elements: state.weights.values().map(elements).max().unwrap_or(0),
                    decoded_bytes: state
                        .weights
                        .values()
                        .map(|w| (elements(w) * w.dtype.bitsize() / 8) as u64)
                        .max()
                        .unwrap_or(0),
                };
                decode_on_device(
                    shared,
                    &mut state.buffers,
                    largest,
                    uploaded,
                    weight.dtype,
                    [output, input],
                    fresh,
                )
                .map_err(|e| e.in_tensor(self.path_of(name), name))
            }
        }
    }

    fn path_of(&self, name: &str) -> &std::path::Path {
        self.inner
            .checkpoint
            .get(name)
            .map_or(std::path::Path::new(""), |(file, _)| file.path())
    }
}

/// The most any kept-coded weight needs.
#[derive(Clone, Copy)]
struct Largest {
    elements: usize,
    /// Decoded, as stored.
    decoded_bytes: u64,
}

/// Decodes `uploaded` on the shared device into the reused scratch, widens
/// it transposed into the reused burn tensor (or, where `fresh`, a new
/// one), and returns that tensor's first `out × in` elements as
/// `[in, out]`. The buffers are made, or remade, for the `largest` weight.
fn decode_on_device(
    shared: &SharedDevice,
    state: &mut Buffers,
    largest: Largest,
    uploaded: &dyn DeviceTensor,
    dtype: safetensors::Dtype,
    [output, input]: [usize; 2],
    fresh: bool,
) -> Result<Tensor<2>> {
    let backend = shared.backend();
    let elements = output * input;
    let decoded_capacity = largest
        .decoded_bytes
        .max(1)
        .next_multiple_of(backend.output_alignment());
    let largest = largest.elements.max(1);
    if state
        .device_scratch
        .as_ref()
        .is_none_or(|scratch| scratch.len() < decoded_capacity)
    {
        state.device_scratch = None;
        state.device_scratch = Some(backend.alloc(decoded_capacity)?);
    }
    if state
        .wide
        .as_ref()
        .is_none_or(|wide| wide.shape().num_elements() < largest)
    {
        state.wide = Some(Tensor::<1>::empty([largest], (shared.device(), DType::F32)));
    }
    let (Some(scratch), Some(reused)) = (&state.device_scratch, &state.wide) else {
        return Err(backend_error(NAME, "no decode buffer"));
    };
    let target = if fresh {
        Tensor::<1>::empty([elements.max(1)], (shared.device(), DType::F32))
    } else {
        reused.clone()
    };
    let wide = shared.decode_transposed_into(
        target,
        uploaded,
        dtype,
        [output as u64, input as u64],
        scratch.as_ref(),
    )?;
    Ok(wide.slice(0..elements).reshape([input, output]))
}

/// `[rows, columns]` values of `dtype` (BF16, F16 or F32) as F32, written
/// as their `[columns, rows]` transpose: burn-store's loading with
/// `PyTorchToBurnAdapter` (a transposition) and `FloatCastAdapter::to(F32)`
/// (the `half` crate's `to_f32`).
fn widen_transposed(
    dtype: safetensors::Dtype,
    bytes: &[u8],
    [rows, columns]: [usize; 2],
) -> Vec<f32> {
    let value = |i: usize| -> f32 {
        match dtype {
            safetensors::Dtype::BF16 => {
                half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
            }
            safetensors::Dtype::F16 => {
                half::f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32()
            }
            _ => f32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ]),
        }
    };
    super::transposed(value, [rows, columns])
}

/// One kept-coded weight of a [`CodedWeights`].
#[derive(Clone, Debug)]
pub struct CodedWeight {
    weights: CodedWeights,
    name: String,
    input: usize,
    output: usize,
}

impl CodedWeight {
    /// The checkpoint's name for it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `[in, out]`, as [`get`](Self::get) gives it.
    pub fn dims(&self) -> [usize; 2] {
        [self.input, self.output]
    }

    /// The weight decoded into a tensor of its own, `[in, out]` F32 as
    /// burn's `Linear` holds it.
    pub fn get(&self) -> Result<Tensor<2>> {
        let mut state = self.weights.state();
        self.weights.decode(&mut state, &self.name, true)
    }
}

/// A linear layer whose weight stays coded ([`CodedWeights::linear`]); its
/// bias is an ordinary parameter, loaded by a store as `Linear`'s is. Moving
/// it to another device moves the bias only.
#[derive(Module, Debug)]
pub struct CodedLinear {
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    pub weight: CodedWeight,
}

impl CodedLinear {
    /// burn's `Linear::forward` with the weight decoded for it. Panics where
    /// the decode fails (the device lost, or host memory changed under a
    /// checked weight), naming the file and the weight, as burn's own
    /// operations panic on device failures; [`try_forward`](Self::try_forward)
    /// returns the error instead.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        match self.try_forward(input) {
            Ok(output) => output,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`forward`](Self::forward), with a failed decode as an error.
    pub fn try_forward<const D: usize>(&self, input: Tensor<D>) -> Result<Tensor<D>> {
        let width = input.dims()[D - 1];
        if width != self.weight.input {
            return Err(Error::Usage(format!(
                "{}: an input of width {width} to a layer of {} inputs",
                self.weight.name, self.weight.input
            )));
        }
        self.weight
            .weights
            .forward(&self.weight.name, input, self.bias.as_ref().map(Param::val))
    }
}
