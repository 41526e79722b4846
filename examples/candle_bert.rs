//! candle-transformers' BERT loaded from a compressed checkpoint, against
//! the same model loaded from the original file: the embeddings of a fixed
//! batch of token ids must be bit-identical.
//!
//! ```sh
//! cargo run --release --features candle --example candle_bert [COMPRESSED] [ORIGINAL]
//! ```
//!
//! Without paths it compresses `../shared/testdata/all-MiniLM-L6-v2.bf16.safetensors`
//! (the checkpoint candle's own BERT example uses) into a temporary
//! directory. It prints one line ending in `identical`, or says what
//! differs and exits 1. It runs on the CPU.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

/// all-MiniLM-L6-v2's configuration (its `config.json`, less what candle
/// does not read).
const MINILM_CONFIG: &str = r#"{
    "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
    "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "max_position_embeddings": 512, "type_vocab_size": 2,
    "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
    "classifier_dropout": null, "model_type": "bert"
}"#;

/// Two sentences' token ids (BERT's uncased vocabulary), the second padded.
const TOKEN_IDS: [[u32; 8]; 2] = [
    [101, 1996, 4248, 2829, 4419, 14523, 102, 0],
    [101, 23435, 2003, 19875, 1012, 102, 0, 0],
];

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("candle_bert: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let arguments: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let scratch = tempfile::tempdir()?;
    let (compressed, original) = match arguments.as_slice() {
        [] => {
            let original = Path::new("../shared/testdata/all-MiniLM-L6-v2.bf16.safetensors");
            let compressed = scratch.path().join("all-MiniLM-L6-v2.bf16.ecf.safetensors");
            ecfloat::container::compress_file(original, &compressed, &Default::default())?;
            (compressed, original.to_path_buf())
        }
        [compressed, original] => (compressed.clone(), original.clone()),
        _ => return Err("usage: candle_bert [COMPRESSED ORIGINAL]".into()),
    };
    let device = Device::Cpu;
    let config: Config = serde_json::from_str(MINILM_CONFIG)?;
    let from_compressed = ecfloat::candle::var_builder(&compressed, DType::F32, &device)?;
    let weights = candle_core::safetensors::load(&original, &device)?;
    let from_original = VarBuilder::from_tensors(weights, DType::F32, &device);

    let ids = Tensor::new(&TOKEN_IDS, &device)?;
    let token_types = ids.zeros_like()?;
    let mask = ids.ne(0u32)?.to_dtype(DType::U32)?;
    let embed = |vb: VarBuilder| -> candle_core::Result<Tensor> {
        BertModel::load(vb, &config)?.forward(&ids, &token_types, Some(&mask))
    };
    let ours = embed(from_compressed)?;
    let theirs = embed(from_original)?;
    let identical = ours.shape() == theirs.shape()
        && safetensors::View::data(&ours) == safetensors::View::data(&theirs);
    println!(
        "candle BERT ({}, F32 on the CPU): embeddings {:?} of the compressed checkpoint and of the original are {}",
        original.display(),
        ours.dims(),
        if identical { "identical" } else { "different" }
    );
    Ok(identical)
}
