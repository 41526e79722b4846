//! candle-transformers' BERT loaded from a compressed checkpoint, against
//! the same model loaded from the original file: the embeddings of a fixed
//! batch of token ids must be bit-identical.
//!
//! ```sh
//! cargo run --release --features candle --example candle_bert [--device cpu|cuda] [COMPRESSED ORIGINAL]
//! ```
//!
//! Without paths it compresses `../shared/testdata/all-MiniLM-L6-v2.bf16.safetensors`
//! (the checkpoint candle's own BERT example uses) into a temporary
//! directory. The compressed checkpoint runs twice: decoded whole when
//! loaded (`ecfloat::candle::var_builder`), and with its linear layers and
//! embedding tables kept coded until they run (`CompressedModel`). Each
//! prints one line ending in `identical`; if either differs it exits 1.
//! `--device cuda` (built with `--features candle-cuda`) decodes on the
//! GPU, on candle's stream.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config};
use ecfloat::candle::{CompressedEmbedding, CompressedLinear, CompressedModel};

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

/// candle-transformers' BERT from a compressed checkpoint, both ways,
/// against the original.
#[derive(clap::Parser)]
struct Arguments {
    /// Where the model runs (cuda: built with --features candle-cuda).
    #[arg(long, value_enum, default_value = "cpu")]
    device: Target,
    /// The compressed checkpoint and its original; by default the MiniLM
    /// test file, compressed here.
    #[arg(num_args = 2, value_names = ["COMPRESSED", "ORIGINAL"])]
    paths: Vec<PathBuf>,
}

#[derive(Clone, clap::ValueEnum)]
enum Target {
    Cpu,
    Cuda,
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let arguments = <Arguments as clap::Parser>::parse();
    let device = match arguments.device {
        Target::Cpu => Device::Cpu,
        Target::Cuda => Device::new_cuda(0)
            .map_err(|e| format!("--device cuda: {e} (build with --features candle-cuda)"))?,
    };
    let scratch = tempfile::tempdir()?;
    let (compressed, original) = match arguments.paths.as_slice() {
        [compressed, original] => (compressed.clone(), original.clone()),
        _ => {
            let original = Path::new("../shared/testdata/all-MiniLM-L6-v2.bf16.safetensors");
            let compressed = scratch.path().join("all-MiniLM-L6-v2.bf16.ecf.safetensors");
            ecfloat::container::compress_file(original, &compressed, &Default::default())?;
            (compressed, original.to_path_buf())
        }
    };
    let config: Config = serde_json::from_str(MINILM_CONFIG)?;
    let from_compressed = ecfloat::candle::var_builder(&compressed, DType::F32, &device)?;
    let weights = candle_core::safetensors::load(&original, &device)?;
    let from_original = VarBuilder::from_tensors(weights, DType::F32, &device);

    let ids = Tensor::new(&TOKEN_IDS, &device)?;
    let token_types = ids.zeros_like()?;
    let mask = ids.ne(0u32)?.to_dtype(DType::U32)?;
    let theirs =
        BertModel::load(from_original, &config)?.forward(&ids, &token_types, Some(&mask))?;
    let decoded =
        BertModel::load(from_compressed, &config)?.forward(&ids, &token_types, Some(&mask))?;
    let model = CompressedModel::open(&compressed, DType::F32, &device)?;
    let coded = CompressedBert::load(&model, &config)?.forward(&ids, &token_types, &mask)?;
    let memory = model.memory();

    let mut all_identical = true;
    let mut report = |mode: &str, ours: &Tensor| {
        let bytes = |t: &Tensor| {
            t.to_device(&Device::Cpu)
                .map(|t| safetensors::View::data(&t).into_owned())
        };
        let identical = ours.shape() == theirs.shape() && bytes(ours)? == bytes(&theirs)?;
        all_identical &= identical;
        println!(
            "candle BERT ({}, F32 on {}), {mode}: embeddings {:?} of the compressed checkpoint and of the original are {}",
            original.display(),
            if device.is_cuda() { "CUDA" } else { "the CPU" },
            ours.dims(),
            if identical { "identical" } else { "different" }
        );
        Ok::<_, candle_core::Error>(())
    };
    report("decoded when loaded", &decoded)?;
    report(
        &format!(
            "linear layers and embeddings kept coded ({:.1} MB held at most, against {:.1} MB uncompressed)",
            memory.peak_bytes as f64 / 1e6,
            memory.uncompressed_bytes as f64 / 1e6
        ),
        &coded,
    )?;
    Ok(all_identical)
}

/// BERT computed as candle-transformers' `BertModel` computes it (at
/// inference, so without dropout), with its linear layers and embedding
/// tables kept coded until they run.
struct CompressedBert {
    word_embeddings: CompressedEmbedding,
    position_embeddings: CompressedEmbedding,
    token_type_embeddings: CompressedEmbedding,
    embeddings_norm: LayerNorm,
    layers: Vec<CompressedBertLayer>,
    heads: usize,
}

struct CompressedBertLayer {
    query: CompressedLinear,
    key: CompressedLinear,
    value: CompressedLinear,
    attention_output: CompressedLinear,
    attention_norm: LayerNorm,
    intermediate: CompressedLinear,
    output: CompressedLinear,
    output_norm: LayerNorm,
}

impl CompressedBert {
    fn load(model: &CompressedModel, config: &Config) -> candle_core::Result<Self> {
        let norm = |prefix: &str| -> candle_core::Result<LayerNorm> {
            Ok(LayerNorm::new(
                model.tensor(&format!("{prefix}.weight"))?,
                model.tensor(&format!("{prefix}.bias"))?,
                config.layer_norm_eps,
            ))
        };
        let layers = (0..config.num_hidden_layers)
            .map(|index| {
                let layer = format!("encoder.layer.{index}");
                Ok(CompressedBertLayer {
                    query: model.linear(&format!("{layer}.attention.self.query"))?,
                    key: model.linear(&format!("{layer}.attention.self.key"))?,
                    value: model.linear(&format!("{layer}.attention.self.value"))?,
                    attention_output: model.linear(&format!("{layer}.attention.output.dense"))?,
                    attention_norm: norm(&format!("{layer}.attention.output.LayerNorm"))?,
                    intermediate: model.linear(&format!("{layer}.intermediate.dense"))?,
                    output: model.linear(&format!("{layer}.output.dense"))?,
                    output_norm: norm(&format!("{layer}.output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(CompressedBert {
            word_embeddings: model.embedding("embeddings.word_embeddings")?,
            position_embeddings: model.embedding("embeddings.position_embeddings")?,
            token_type_embeddings: model.embedding("embeddings.token_type_embeddings")?,
            embeddings_norm: norm("embeddings.LayerNorm")?,
            layers,
            heads: config.num_attention_heads,
        })
    }

    fn forward(
        &self,
        ids: &Tensor,
        token_types: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (_, length) = ids.dims2()?;
        let positions = Tensor::new(&(0..length as u32).collect::<Vec<_>>()[..], ids.device())?;
        let embeddings = (self.word_embeddings.forward(ids)?
            + self.token_type_embeddings.forward(token_types)?)?
        .broadcast_add(&self.position_embeddings.forward(&positions)?)?;
        let mut hidden = self.embeddings_norm.forward(&embeddings)?;
        // 0 where a token is attended to, the lowest float where it is padding.
        let mask = mask.unsqueeze(1)?.unsqueeze(1)?.to_dtype(hidden.dtype())?;
        let mask = (mask.ones_like()? - &mask)?.broadcast_mul(
            &Tensor::try_from(f32::MIN)?
                .to_device(mask.device())?
                .to_dtype(hidden.dtype())?,
        )?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &mask, self.heads)?;
        }
        Ok(hidden)
    }
}

impl CompressedBertLayer {
    fn forward(&self, hidden: &Tensor, mask: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
        let head_size = hidden.dim(D::Minus1)? / heads;
        let by_head = |xs: Tensor| -> candle_core::Result<Tensor> {
            let (batch, length, _) = xs.dims3()?;
            xs.reshape((batch, length, heads, head_size))?
                .transpose(1, 2)?
                .contiguous()
        };
        let query = by_head(self.query.forward(hidden)?)?;
        let key = by_head(self.key.forward(hidden)?)?;
        let value = by_head(self.value.forward(hidden)?)?;
        let scores = (query.matmul(&key.t()?)? / (head_size as f64).sqrt())?.broadcast_add(mask)?;
        let context = candle_nn::ops::softmax(&scores, D::Minus1)?
            .matmul(&value)?
            .transpose(1, 2)?
            .contiguous()?
            .flatten_from(D::Minus2)?;
        let attention = self
            .attention_norm
            .forward(&(self.attention_output.forward(&context)? + hidden)?)?;
        let intermediate = self.intermediate.forward(&attention)?.gelu_erf()?;
        self.output_norm
            .forward(&(self.output.forward(&intermediate)? + &attention)?)
    }
}
