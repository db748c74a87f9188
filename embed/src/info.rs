use serde::{Deserialize, Serialize};

/// How token vectors become one text vector, as the model's sentence-transformers
/// `1_Pooling/config.json` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
}

/// What a knowledge base records about the model that embedded it. Two models are
/// interchangeable only when their dimension, pooling and weights fingerprint agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// A human name: the model folder's name or the hub id.
    pub name: String,
    pub dim: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    /// Tokens per text the model sees, special tokens included; longer texts are truncated.
    pub max_seq_len: usize,
    /// Special tokens the tokenizer adds around a text (`[CLS]`, `[SEP]`).
    pub special_tokens: usize,
    /// A blake3 prefix of the weights file: tells two models of the same name apart.
    pub fingerprint: String,
}

impl ModelInfo {
    /// Why a store built with `self` cannot be searched or extended with `other`, if so.
    pub fn incompatibility(&self, other: &ModelInfo) -> Option<String> {
        if self.dim != other.dim {
            return Some(format!("dimension {} vs {}", self.dim, other.dim));
        }
        if self.pooling != other.pooling || self.normalize != other.normalize {
            return Some(format!("pooling {:?} vs {:?}", self.pooling, other.pooling));
        }
        if self.fingerprint != other.fingerprint {
            return Some(format!(
                "different weights ({} vs {})",
                self.fingerprint, other.fingerprint
            ));
        }
        None
    }
}
