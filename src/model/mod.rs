//! Whole models: a Hugging Face checkpoint ([`Checkpoint`]: `config.json` + `*.safetensors`,
//! Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Granite-MoE, GLM-4.5, dots.llm1, ERNIE-4.5, DeepSeek-V2
//! and V3, and the Switch Transformers encoder) or a model in memory
//! ([`ModelWeights`], the built-in default), its plaintext reference ([`forward`] in f64,
//! [`forward_quantized`] on the weights rounded to the engine's fixed point, [`forward_with`]
//! a [`Variant`]: the experts' activations on the protocols' piecewise fits, routing near-ties
//! broken the other way) and its
//! private inference between the two parties ([`infer`] on the client, [`serve`] on the
//! server; [`infer_cached`] extends a sequence against both parties' [`KvCache`]s, one token
//! per step of greedy generation).
//!
//! The client needs the public architecture only ([`ModelConfig`]); the server's weights
//! (embedding table included) never leave it, and it learns nothing but the prompt's length.

mod builtin;
mod checkpoint;
mod config;
mod encode;
mod fp8;
mod mxfp4;
mod ranges;
mod reference;
mod secure;
mod weights;

pub use builtin::{DEEPSEEK_V2_LITE, GPT_OSS_20B, GRANITE_1B_A400M, default_config, default_weights};
pub use checkpoint::{Checkpoint, HfTensor, hf_tensors, public_embedding};
pub use config::{Family, Ffn, LatentAttention, ModelConfig, Positions, QkNorm, Scales, Yarn, relative_bucket};
pub use encode::{CheckedWeights, check_weights};
pub use ranges::{Margin, NEAR_TIE, Quantity, Range, Ranges, ranges};
pub use reference::{
    Activations, Variant, forward, forward_quantized, forward_variants, forward_with, resolve_near_ties,
};
pub use secure::{
    Embedding, KvCache, MAX_TOKENS, Output, Plan, Progress, Prompt, finish, infer, infer_cached, serve, setup_he,
};
pub use weights::{
    FfnWeights, HeadMaps, LatentMaps, LayerWeights, Mlp, MlpBias, ModelWeights, QkvWeights, RandomWeights,
    WeightSource, transpose,
};

use thiserror::Error;

use crate::moe::MoeError;
use crate::proto::ProtoError;
use crate::ring::RingError;

/// Errors of the model layer.
#[derive(Debug, Error)]
pub enum ModelError {
    /// `config.json` is malformed, or asks for something unsupported.
    #[error("model config: {0}")]
    Config(String),
    /// A tensor is missing, extra, misshapen or of an unsupported type.
    #[error("model weights: {0}")]
    Weights(String),
    /// A file could not be read.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// This party's own input does not fit (token ids, prompt length).
    #[error("model input: {0}")]
    Input(String),
    /// The peer runs a different model or method.
    #[error("the peer's model differs: ours `{ours}`, theirs `{theirs}`")]
    Mismatch {
        /// This party's statement.
        ours: String,
        /// The peer's.
        theirs: String,
    },
    /// The peer refused, with its reason.
    #[error("the peer refused: {0}")]
    PeerRefused(String),
    /// A weight does not fit the fixed-point format (named).
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A MoE layer failed.
    #[error(transparent)]
    Moe(#[from] MoeError),
    /// A protocol step failed.
    #[error(transparent)]
    Proto(#[from] ProtoError),
}

/// Result alias of the model layer.
pub type ModelResult<T> = Result<T, ModelError>;
