//! Deterministic synthetic weights shaped like trained ones, for the demo,
//! the benchmarks and the conformance cases.
//!
//! Trained weights are heavy-tailed: most values sit within a few powers of
//! two of the tensor's scale, a few are far larger. A Student-t draw (ν = 4)
//! times a per-row log-normal scale reproduces that: concentrated
//! exponents, rare outliers, near-uniform mantissas.

use half::{bf16, f16};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, StudentT};
use rand_pcg::Pcg64Mcg;

use crate::codec::FloatKind;

/// `elements` heavy-tailed values around `scale`, in rows of `row_len`.
pub fn heavy_tailed(elements: usize, row_len: usize, scale: f32, seed: u64) -> Vec<f32> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let tail = StudentT::new(4.0f32).expect("valid degrees of freedom");
    let row_scale = LogNormal::new(0.0f32, 0.3).expect("valid log-normal");
    let mut values = Vec::with_capacity(elements);
    while values.len() < elements {
        let row = scale * row_scale.sample(&mut rng);
        let take = row_len.max(1).min(elements - values.len());
        values.extend((0..take).map(|_| row * tail.sample(&mut rng)));
    }
    values
}

/// Converts values to the little-endian bytes of `kind`, rounding to
/// nearest even. FP8 E4M3 values are first scaled so the largest magnitude
/// maps to 448, its largest finite value, as FP8 checkpoints do.
pub fn to_bytes(values: &[f32], kind: FloatKind) -> Vec<u8> {
    match kind {
        FloatKind::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        FloatKind::Bf16 => values
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        FloatKind::F16 => values
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        FloatKind::F8E4M3 => {
            let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if amax > 0.0 { 448.0 / amax } else { 1.0 };
            values
                .iter()
                .map(|&v| float8::F8E4M3::from_f32(v * scale).to_bits())
                .collect()
        }
        FloatKind::F8E5M2 => values
            .iter()
            .map(|&v| float8::F8E5M2::from_f32(v).to_bits())
            .collect(),
    }
}

/// Heavy-tailed weights of `kind` as bytes.
pub fn heavy_tailed_bytes(kind: FloatKind, elements: usize, seed: u64) -> Vec<u8> {
    to_bytes(&heavy_tailed(elements, 1024, 0.02, seed), kind)
}

/// Uniformly random bytes: data no entropy coder can shrink.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}
