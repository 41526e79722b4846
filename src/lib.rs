//! ecfloat: lossless compression of floating-point model weights, decoded
//! on the CPU or the GPU.
//!
//! Layers, each depending only on those below it:
//! * [`codec`] — splits elements into an entropy-coded head and a raw rest;
//!   the encoder and the CPU reference decoder.
//! * [`backend`] — decodes coded tensors on a device (CPU, wgpu, CUDA)
//!   behind one small trait.
//! * [`container`] — the compressed file: a safetensors file whose tensors
//!   are the coded planes, validated before anything decodes it.
//! * [`runtime`] — a compressed model resident on a device, decoded a layer
//!   at a time just before it runs.
//!
//! [`conformance`] holds the cases every backend must pass bit for bit;
//! [`synth`] makes the synthetic weights they and the demo use; [`tools`]
//! holds what the `ecf` commands run.

pub mod backend;
pub mod codec;
pub mod conformance;
pub mod container;
pub mod error;
pub mod runtime;
pub mod synth;
pub mod tools;

pub use error::{Error, Result};
