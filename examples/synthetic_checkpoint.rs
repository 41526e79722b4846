//! Writes a Hugging Face-style sharded checkpoint of 7B-shaped layers
//! (hidden 4096, MLP 11008, vocabulary 32000) filled with deterministic
//! heavy-tailed weights: `model-0000i-of-0000n.safetensors`, their
//! `model.safetensors.index.json` and a `config.json`. It is what the
//! whole-checkpoint figures in BENCHMARKS.md are measured on.
//!
//! ```sh
//! cargo run --release --example synthetic_checkpoint -- DIR [--gib 4] [--shards 4] [--dtype BF16]
//! ```

use std::path::{Path, PathBuf};

use ecfloat::codec::FloatKind;
use ecfloat::container::write::{OutputTensor, SafetensorsWriter};
use rayon::prelude::*;

const HIDDEN: u64 = 4096;
const MLP: u64 = 11008;
const VOCABULARY: u64 = 32000;
/// Elements generated per parallel piece, each from its own seed.
const PIECE_ELEMENTS: u64 = 1 << 20;

struct Tensor {
    name: String,
    shape: Vec<u64>,
}

impl Tensor {
    fn new(name: String, shape: &[u64]) -> Self {
        Tensor {
            name,
            shape: shape.to_vec(),
        }
    }

    fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

fn layer(index: usize) -> Vec<Tensor> {
    let prefix = format!("model.layers.{index}");
    let mut tensors: Vec<Tensor> = ["q_proj", "k_proj", "v_proj", "o_proj"]
        .iter()
        .map(|p| Tensor::new(format!("{prefix}.self_attn.{p}.weight"), &[HIDDEN, HIDDEN]))
        .collect();
    tensors.push(Tensor::new(
        format!("{prefix}.mlp.gate_proj.weight"),
        &[MLP, HIDDEN],
    ));
    tensors.push(Tensor::new(
        format!("{prefix}.mlp.up_proj.weight"),
        &[MLP, HIDDEN],
    ));
    tensors.push(Tensor::new(
        format!("{prefix}.mlp.down_proj.weight"),
        &[HIDDEN, MLP],
    ));
    for norm in ["input_layernorm", "post_attention_layernorm"] {
        tensors.push(Tensor::new(format!("{prefix}.{norm}.weight"), &[HIDDEN]));
    }
    tensors
}

/// Embedding, enough layers to reach `target_bytes`, final norm and head.
fn model(target_bytes: u64, width: u64) -> Vec<Tensor> {
    let embedding = VOCABULARY * HIDDEN * width;
    let layer_bytes: u64 = layer(0).iter().map(|t| t.elements() * width).sum();
    let layers = target_bytes
        .saturating_sub(2 * embedding)
        .div_ceil(layer_bytes)
        .max(1) as usize;
    let mut tensors = vec![Tensor::new(
        "model.embed_tokens.weight".into(),
        &[VOCABULARY, HIDDEN],
    )];
    tensors.extend((0..layers).flat_map(layer));
    tensors.push(Tensor::new("model.norm.weight".into(), &[HIDDEN]));
    tensors.push(Tensor::new("lm_head.weight".into(), &[VOCABULARY, HIDDEN]));
    tensors
}

fn write_shard(
    path: &Path,
    tensors: &[Tensor],
    kind: FloatKind,
    seed: &mut u64,
) -> ecfloat::Result<()> {
    let width = kind.width_bytes() as u64;
    let layout: Vec<OutputTensor> = tensors
        .iter()
        .map(|t| OutputTensor {
            name: t.name.clone(),
            dtype: kind.safetensors_name().to_string(),
            shape: t.shape.clone(),
            len: t.elements() * width,
        })
        .collect();
    let mut file = SafetensorsWriter::create(path, &[("format", "pt".to_string())], &layout)?;
    for tensor in tensors {
        let elements = tensor.elements();
        let first_seed = *seed;
        *seed += elements.div_ceil(PIECE_ELEMENTS);
        let pieces: Vec<Vec<u8>> = (0..elements.div_ceil(PIECE_ELEMENTS))
            .into_par_iter()
            .map(|piece| {
                let len = PIECE_ELEMENTS.min(elements - piece * PIECE_ELEMENTS) as usize;
                ecfloat::synth::heavy_tailed_bytes(kind, len, first_seed + piece)
            })
            .collect();
        for piece in pieces {
            file.write(&piece)?;
        }
    }
    file.finish()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut directory: Option<PathBuf> = None;
    let (mut gib, mut shards, mut dtype) = (4.0f64, 4usize, "BF16".to_string());
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--gib" => gib = value()?.parse()?,
            "--shards" => shards = value()?.parse()?,
            "--dtype" => dtype = value()?,
            _ if directory.is_none() => directory = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg}").into()),
        }
    }
    let directory =
        directory.ok_or("usage: synthetic_checkpoint DIR [--gib 4] [--shards 4] [--dtype BF16]")?;
    let kind = FloatKind::from_safetensors_name(&dtype).ok_or(format!("unknown dtype {dtype}"))?;
    let width = kind.width_bytes() as u64;
    let tensors = model((gib * (1u64 << 30) as f64) as u64, width);
    let total: u64 = tensors.iter().map(|t| t.elements() * width).sum();
    let shards = shards.clamp(1, tensors.len());
    std::fs::create_dir_all(&directory)?;

    // Consecutive tensors, cut where the running size passes each shard's share.
    let mut groups: Vec<Vec<Tensor>> = (0..shards).map(|_| Vec::new()).collect();
    let mut done = 0u64;
    for tensor in tensors {
        let shard = ((done * shards as u64) / total) as usize;
        done += tensor.elements() * width;
        groups[shard.min(shards - 1)].push(tensor);
    }
    let mut weight_map = serde_json::Map::new();
    let mut seed = 1;
    for (index, group) in groups.iter().enumerate() {
        let name = format!("model-{:05}-of-{:05}.safetensors", index + 1, shards);
        write_shard(&directory.join(&name), group, kind, &mut seed)?;
        for tensor in group {
            weight_map.insert(tensor.name.clone(), name.clone().into());
        }
        eprintln!("wrote {name}: {} tensors", group.len());
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(
        directory.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index)?,
    )?;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": MLP,
        "vocab_size": VOCABULARY,
        "torch_dtype": dtype.to_lowercase(),
    });
    std::fs::write(
        directory.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    println!(
        "{}: {:.2} GiB of {dtype} weights in {shards} shards",
        directory.display(),
        total as f64 / (1u64 << 30) as f64
    );
    Ok(())
}
