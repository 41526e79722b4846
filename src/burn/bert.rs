//! A BERT encoder of burn-nn modules (post-norm, as BERT is), whose
//! parameters are named as Hugging Face's BERT checkpoints name theirs, up
//! to [`BertConfig::key_remapper`] and burn-store's
//! `PyTorchToBurnAdapter`: what the burn integration is proven on, with
//! sentence-transformers' all-MiniLM-L6-v2. Its linear layers are burn's
//! [`Linear`], or [`CodedLinear`] with their weights kept coded
//! ([`BertConfig::init_kept_coded`]).

use std::convert::Infallible;

use ::burn::module::Module;
use ::burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use ::burn::tensor::activation::{gelu, softmax};
use ::burn::tensor::{DType, Device, Int, Tensor};
use burn_store::{
    FloatCastAdapter, KeyRemapper, ModuleAdapter, PyTorchToBurnAdapter, SafetensorsStore,
};

use super::coded::{CodedLinear, CodedWeights};
use super::{EcfStore, SharedDevice};
use crate::error::Error;

/// A linear layer of BERT's blocks: burn's [`Linear`], or a [`CodedLinear`].
pub trait BertLinear: Module {
    fn forward(&self, input: Tensor<3>) -> Tensor<3>;
}

impl BertLinear for Linear {
    fn forward(&self, input: Tensor<3>) -> Tensor<3> {
        Linear::forward(self, input)
    }
}

impl BertLinear for CodedLinear {
    fn forward(&self, input: Tensor<3>) -> Tensor<3> {
        CodedLinear::forward(self, input)
    }
}

/// The shape of a BERT model.
#[derive(Clone, Debug)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    pub max_positions: usize,
    pub token_types: usize,
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// sentence-transformers' all-MiniLM-L6-v2.
    pub fn minilm_l6() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 384,
            layers: 6,
            heads: 12,
            intermediate_size: 1536,
            max_positions: 512,
            token_types: 2,
            layer_norm_eps: 1e-12,
        }
    }

    /// The renamings from a Hugging Face BERT checkpoint's tensor names to
    /// this module's paths, for a store's `remap`.
    pub fn key_remapper() -> KeyRemapper {
        KeyRemapper::from_patterns(vec![
            (r"\.LayerNorm\.", ".layer_norm."),
            (r"\.self\.", ".self_attention."),
        ])
        .expect("the patterns are regular expressions")
    }

    /// What else loading a Hugging Face checkpoint as an F32 model takes:
    /// PyTorch's layouts to burn's, every float widened to F32.
    pub fn pytorch_f32_adapter() -> impl ModuleAdapter + 'static {
        PyTorchToBurnAdapter.chain(FloatCastAdapter::to(DType::F32))
    }

    /// burn-store's loading of an original checkpoint into this model, F32.
    pub fn original_store(path: &std::path::Path) -> SafetensorsStore {
        SafetensorsStore::from_file(path)
            .remap(Self::key_remapper())
            .with_from_adapter(Self::pytorch_f32_adapter())
    }

    /// ecfloat's loading of a compressed checkpoint into this model, as
    /// [`original_store`](Self::original_store) loads the original: decoded
    /// on the host, or on `shared` where given.
    pub fn compressed_store(path: &std::path::Path, shared: Option<&SharedDevice>) -> EcfStore {
        let store = EcfStore::from_file(path)
            .remap(Self::key_remapper())
            .with_from_adapter(Self::pytorch_f32_adapter());
        match shared {
            Some(shared) => store.on_shared_device(shared),
            None => store,
        }
    }

    /// The model, its parameters initialised on `device` (to be loaded).
    pub fn init(&self, device: &Device) -> Bert {
        let linear = |_: &str, input, output| {
            Ok::<_, Infallible>(LinearConfig::new(input, output).init(device))
        };
        match self.init_with(device, linear) {
            Ok(model) => model,
            Err(never) => match never {},
        }
    }

    /// The model with every linear layer's weight kept coded in `weights`
    /// (a Hugging Face BERT checkpoint), on its device; the other
    /// parameters, biases among them, are initialised to be loaded.
    pub fn init_kept_coded(&self, weights: &CodedWeights) -> Result<Bert<CodedLinear>, Error> {
        self.init_with(weights.device(), |prefix, input, output| {
            weights.linear(prefix, input, output, true)
        })
    }

    /// The model, with each linear layer made by `linear` from its prefix
    /// in a Hugging Face BERT checkpoint, its inputs and its outputs.
    fn init_with<L: BertLinear, E>(
        &self,
        device: &Device,
        mut linear: impl FnMut(&str, usize, usize) -> Result<L, E>,
    ) -> Result<Bert<L>, E> {
        let norm = || {
            LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let hidden = self.hidden_size;
        let mut layers = Vec::with_capacity(self.layers);
        for index in 0..self.layers {
            let prefix = format!("encoder.layer.{index}");
            layers.push(BertLayer {
                attention: BertAttention {
                    self_attention: BertSelfAttention {
                        query: linear(&format!("{prefix}.attention.self.query"), hidden, hidden)?,
                        key: linear(&format!("{prefix}.attention.self.key"), hidden, hidden)?,
                        value: linear(&format!("{prefix}.attention.self.value"), hidden, hidden)?,
                        heads: self.heads,
                    },
                    output: BertProjection {
                        dense: linear(&format!("{prefix}.attention.output.dense"), hidden, hidden)?,
                        layer_norm: norm(),
                    },
                },
                intermediate: BertIntermediate {
                    dense: linear(
                        &format!("{prefix}.intermediate.dense"),
                        hidden,
                        self.intermediate_size,
                    )?,
                },
                output: BertProjection {
                    dense: linear(
                        &format!("{prefix}.output.dense"),
                        self.intermediate_size,
                        hidden,
                    )?,
                    layer_norm: norm(),
                },
            });
        }
        Ok(Bert {
            embeddings: BertEmbeddings {
                word_embeddings: EmbeddingConfig::new(self.vocab_size, hidden).init(device),
                position_embeddings: EmbeddingConfig::new(self.max_positions, hidden).init(device),
                token_type_embeddings: EmbeddingConfig::new(self.token_types, hidden).init(device),
                layer_norm: norm(),
            },
            encoder: BertEncoder { layer: layers },
        })
    }
}

#[derive(Module, Debug)]
pub struct Bert<L: Module + BertLinear = Linear> {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder<L>,
}

impl<L: Module + BertLinear> Bert<L> {
    /// The last hidden state, `[batch, tokens, hidden]`, of `token_ids`
    /// (`[batch, tokens]`, every token attended to), all of token type 0.
    pub fn forward(&self, token_ids: Tensor<2, Int>) -> Tensor<3> {
        let mut hidden = self.embeddings.forward(token_ids);
        for layer in &self.encoder.layer {
            hidden = layer.forward(hidden);
        }
        hidden
    }
}

#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
}

impl BertEmbeddings {
    fn forward(&self, token_ids: Tensor<2, Int>) -> Tensor<3> {
        let [batch, tokens] = token_ids.dims();
        let device = token_ids.device();
        let positions = Tensor::<1, Int>::arange(0..tokens as i64, &device)
            .reshape([1, tokens])
            .repeat_dim(0, batch);
        let types = Tensor::<2, Int>::zeros([batch, tokens], &device);
        let sum = self.word_embeddings.forward(token_ids)
            + self.token_type_embeddings.forward(types)
            + self.position_embeddings.forward(positions);
        self.layer_norm.forward(sum)
    }
}

#[derive(Module, Debug)]
pub struct BertEncoder<L: Module + BertLinear = Linear> {
    pub layer: Vec<BertLayer<L>>,
}

#[derive(Module, Debug)]
pub struct BertLayer<L: Module + BertLinear = Linear> {
    pub attention: BertAttention<L>,
    pub intermediate: BertIntermediate<L>,
    pub output: BertProjection<L>,
}

impl<L: Module + BertLinear> BertLayer<L> {
    fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        let attended = self.attention.forward(hidden);
        let expanded = gelu(self.intermediate.dense.forward(attended.clone()));
        self.output.forward(expanded, attended)
    }
}

#[derive(Module, Debug)]
pub struct BertAttention<L: Module + BertLinear = Linear> {
    pub self_attention: BertSelfAttention<L>,
    pub output: BertProjection<L>,
}

impl<L: Module + BertLinear> BertAttention<L> {
    fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        let context = self.self_attention.forward(hidden.clone());
        self.output.forward(context, hidden)
    }
}

#[derive(Module, Debug)]
pub struct BertSelfAttention<L: Module + BertLinear = Linear> {
    pub query: L,
    pub key: L,
    pub value: L,
    pub heads: usize,
}

impl<L: Module + BertLinear> BertSelfAttention<L> {
    fn forward(&self, hidden: Tensor<3>) -> Tensor<3> {
        let [batch, tokens, width] = hidden.dims();
        let head_width = width / self.heads;
        let split = |x: Tensor<3>| {
            x.reshape([batch, tokens, self.heads, head_width])
                .swap_dims(1, 2)
        };
        let query = split(self.query.forward(hidden.clone()));
        let key = split(self.key.forward(hidden.clone()));
        let value = split(self.value.forward(hidden));
        let scores = query.matmul(key.swap_dims(2, 3)) / (head_width as f64).sqrt();
        softmax(scores, 3)
            .matmul(value)
            .swap_dims(1, 2)
            .reshape([batch, tokens, width])
    }
}

#[derive(Module, Debug)]
pub struct BertIntermediate<L: Module + BertLinear = Linear> {
    pub dense: L,
}

/// A projection back to the hidden width, added to the residual and
/// normalised (BERT's `…output`).
#[derive(Module, Debug)]
pub struct BertProjection<L: Module + BertLinear = Linear> {
    pub dense: L,
    pub layer_norm: LayerNorm,
}

impl<L: Module + BertLinear> BertProjection<L> {
    fn forward(&self, input: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.layer_norm
            .forward(self.dense.forward(input) + residual)
    }
}
