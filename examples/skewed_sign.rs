//! Writes one embedding-shaped tensor, `embed_tokens.weight` [32000, 768],
//! of deterministic heavy-tailed weights of which only about 14 % are
//! negative, as `skewed-sign.{f16,bf16,f32}.safetensors`: the same values
//! in each dtype. A skewed sign is what separates a coder that models the
//! sign with the exponent from one that stores it as a raw bit.
//!
//! ```sh
//! cargo run --release --example skewed_sign -- DIR
//! ```

use std::path::PathBuf;

use ecfloat::codec::FloatKind;
use ecfloat::container::write::{TensorData, write_safetensors};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

const VOCABULARY: u64 = 32000;
const HIDDEN: u64 = 768;
const SCALE: f32 = 0.02;
const NEGATIVE_FRACTION: f64 = 0.14;
const VALUE_SEED: u64 = 1;
/// Apart from the values' seed, so the signs do not echo the magnitudes.
const SIGN_SEED: u64 = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let directory = PathBuf::from(args.next().ok_or("usage: skewed_sign DIR")?);
    if let Some(extra) = args.next() {
        return Err(format!("unexpected argument {extra}").into());
    }
    std::fs::create_dir_all(&directory)?;

    let elements = (VOCABULARY * HIDDEN) as usize;
    let mut values = ecfloat::synth::heavy_tailed(elements, HIDDEN as usize, SCALE, VALUE_SEED);
    let mut signs = Pcg64Mcg::seed_from_u64(SIGN_SEED);
    for value in &mut values {
        let magnitude = value.abs();
        *value = if signs.random_bool(NEGATIVE_FRACTION) {
            -magnitude
        } else {
            magnitude
        };
    }

    let shape = [VOCABULARY, HIDDEN];
    for (kind, suffix) in [
        (FloatKind::F16, "f16"),
        (FloatKind::Bf16, "bf16"),
        (FloatKind::F32, "f32"),
    ] {
        let bytes = ecfloat::synth::to_bytes(&values, kind);
        let path = directory.join(format!("skewed-sign.{suffix}.safetensors"));
        write_safetensors(
            &path,
            &[("format", "pt".to_string())],
            &[TensorData {
                name: "embed_tokens.weight",
                dtype: kind.safetensors_name(),
                shape: &shape,
                bytes: &bytes,
            }],
        )?;
        println!("{}: {} bytes of {suffix}", path.display(), bytes.len());
    }
    Ok(())
}
