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
//!
//! # Quick start
//!
//! Compress a safetensors file, rebuild it byte for byte, and decode one
//! of its tensors on the best device present:
//!
//! ```
//! use ecfloat::backend;
//! use ecfloat::container::{self, CompressOptions, CompressedFile};
//! use ecfloat::container::write::{TensorData, write_safetensors};
//! # fn main() -> ecfloat::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let model = dir.path().join("model.safetensors");
//! # let weights: Vec<u8> = ecfloat::synth::heavy_tailed_bytes(ecfloat::codec::FloatKind::Bf16, 4096, 1);
//! # let tensor = TensorData { name: "layer.0.weight", dtype: "BF16", shape: &[64, 64], bytes: &weights };
//! # write_safetensors(&model, &[], &[tensor])?;
//! # let compressed = dir.path().join("model.ecf.safetensors");
//! # let rebuilt = dir.path().join("rebuilt.safetensors");
//! // model.safetensors -> model.ecf.safetensors, itself a safetensors file.
//! let report = container::compress_file(&model, &compressed, &CompressOptions::default())?;
//! println!("{:.1} % of the original size", 100.0 * report.ratio());
//!
//! // Back to the original bytes, every checksum checked on the way.
//! container::decompress_file(&compressed, &rebuilt, false, &Default::default())?;
//! assert!(std::fs::read(&rebuilt).unwrap() == std::fs::read(&model).unwrap());
//!
//! // One tensor, decoded on CUDA, a hardware GPU through wgpu, or the CPU.
//! let device = backend::open("auto")?;
//! let file = CompressedFile::open(&compressed)?;
//! let tensor = file.tensor("layer.0.weight")?;
//! let bytes = file.decode_tensor(tensor, &backend::decoder(device.as_ref()))?;
//! assert_eq!(bytes, weights);
//! # Ok(())
//! # }
//! ```
//!
//! To keep a whole model on a device and decode it a layer at a time, see
//! [`runtime::Model`].

pub mod backend;
#[cfg(feature = "burn")]
pub mod burn;
#[cfg(feature = "candle")]
pub mod candle;
pub mod codec;
pub mod conformance;
pub mod container;
pub mod error;
pub mod runtime;
pub mod synth;
pub mod tools;

pub use error::{Error, Result};

/// The README's Rust examples, compiled as doctests.
#[cfg(all(doctest, feature = "candle", feature = "burn"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
