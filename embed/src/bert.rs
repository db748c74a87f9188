//! BERT-family sentence-transformers models (MiniLM, BGE, E5, …) run by candle.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams};

use crate::batch::plan_batches;
use crate::encoder::Encoder;
use crate::{Embedder, Embedding, Error, ModelInfo, Pooling, Result};

/// How the embedder batches work.
#[derive(Debug, Clone)]
pub struct EmbedderConfig {
    /// Most texts per forward pass.
    pub max_batch: usize,
    /// Most padded tokens per forward pass (texts × longest text).
    pub token_budget: usize,
    /// Calls of at most this many tokens in all (a search query) multiply by f16 copies of
    /// the weights where the CPU has AVX-512: several times faster for a few rows, vectors
    /// within f16 rounding of the f32 path (cosine ≥ 0.9999 with the reference). 0 keeps
    /// every call on the f32 path, bit for bit the same whatever the batch.
    pub small_call_tokens: usize,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            token_budget: 32 * 256,
            small_call_tokens: crate::encoder::SMALL_ROWS,
        }
    }
}

/// A sentence-transformers BERT model: transformer, pooling, optional L2 normalisation.
pub struct BertEmbedder {
    model: Encoder,
    tokenizer: Tokenizer,
    info: ModelInfo,
    config: EmbedderConfig,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
}

fn read_json<T: serde::de::DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>> {
    let path = dir.join(name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(invalid(dir, format!("{name}: {e}"))),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| invalid(dir, format!("{name}: {e}")))
}

fn invalid(dir: &Path, reason: impl Into<String>) -> Error {
    Error::InvalidModel {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

fn runtime(e: candle_core::Error) -> Error {
    Error::Runtime(e.to_string())
}

impl BertEmbedder {
    /// Calls with at most `rows` tokens use the packed f16 weights (0: never), for tests that
    /// compare the two paths.
    #[cfg(test)]
    pub(crate) fn set_small_rows(&mut self, rows: usize) {
        self.model.small_rows = rows;
    }
}

impl BertEmbedder {
    /// Loads a sentence-transformers model folder: `config.json`, `tokenizer.json`,
    /// `model.safetensors`, and when present `1_Pooling/config.json` (default: mean),
    /// `sentence_bert_config.json` (window) and `modules.json` (whether to normalise).
    ///
    /// Fails with [`Error::InvalidModel`] when a file is missing or malformed.
    pub fn load(dir: &Path, config: &EmbedderConfig) -> Result<Self> {
        let bert: Config =
            read_json(dir, "config.json")?.ok_or_else(|| invalid(dir, "config.json is missing"))?;
        let pooling = match read_json::<PoolingConfig>(dir, "1_Pooling/config.json")? {
            Some(p) if p.pooling_mode_cls_token && !p.pooling_mode_mean_tokens => Pooling::Cls,
            Some(p) if !p.pooling_mode_mean_tokens => {
                return Err(invalid(dir, "only mean and CLS pooling are supported"));
            }
            _ => Pooling::Mean,
        };
        // sentence-transformers normalises only when modules.json lists a Normalize module.
        let normalize = match read_json::<Vec<Module>>(dir, "modules.json")? {
            Some(modules) => modules.iter().any(|m| m.kind.ends_with("Normalize")),
            None => true,
        };
        let max_seq_len = read_json::<SentenceBertConfig>(dir, "sentence_bert_config.json")?
            .and_then(|c| c.max_seq_length)
            .unwrap_or(bert.max_position_embeddings)
            .min(bert.max_position_embeddings);

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| invalid(dir, format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer may truncate at 128 and pad to a fixed length: we truncate
        // at the model's real window and pad per batch ourselves.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_len,
                ..Default::default()
            }))
            .map_err(|e| invalid(dir, format!("tokenizer truncation: {e}")))?;
        tokenizer.with_padding(None);
        let special_tokens = tokenizer
            .encode("", true)
            .map(|e| e.get_ids().len())
            .map_err(|e| Error::Tokenizer(e.to_string()))?;

        let weights_path = dir.join("model.safetensors");
        let weights = std::fs::read(&weights_path)
            .map_err(|e| invalid(dir, format!("model.safetensors: {e}")))?;
        let fingerprint = blake3::hash(&weights).to_hex()[..16].to_string();
        let device = Device::Cpu;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| invalid(dir, format!("model.safetensors: {e}")))?;
        let mut model =
            Encoder::load(vb, &bert).map_err(|e| invalid(dir, format!("weights: {e}")))?;
        model.small_rows = config.small_call_tokens;

        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        let info = ModelInfo {
            name,
            dim: bert.hidden_size,
            pooling,
            normalize,
            max_seq_len,
            special_tokens,
            fingerprint,
        };
        Ok(Self {
            model,
            tokenizer,
            info,
            config: config.clone(),
        })
    }

    /// Overrides the recorded model name (e.g. with the hub id it was resolved from).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.info.name = name.into();
        self
    }

    /// The tokenizer as loaded (truncating at the model's window).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn forward(&self, encodings: &[&tokenizers::Encoding]) -> Result<Vec<Embedding>> {
        // Tokens are packed without padding (see the encoder); empty texts still hold the
        // special tokens, so no length is 0.
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len().max(1)).collect();
        let mut ids = Vec::with_capacity(lengths.iter().sum());
        for (enc, &n) in encodings.iter().zip(&lengths) {
            ids.extend_from_slice(enc.get_ids());
            ids.resize(ids.len() + n - enc.get_ids().len(), 0);
        }
        let hidden = self.model.forward(&ids, &lengths).map_err(runtime)?;
        let mut pooled = Vec::with_capacity(lengths.len());
        let mut offset = 0;
        for &n in &lengths {
            let rows = hidden.narrow(0, offset, n).map_err(runtime)?;
            let vector = match self.info.pooling {
                Pooling::Cls => rows.get(0),
                Pooling::Mean => rows.mean(0),
            }
            .map_err(runtime)?;
            pooled.push(vector);
            offset += n;
        }
        let pooled = Tensor::stack(&pooled, 0).map_err(runtime)?;
        let pooled = if self.info.normalize {
            let norm = pooled
                .sqr()
                .and_then(|t| t.sum_keepdim(1))
                .and_then(|t| t.sqrt())
                .map_err(runtime)?;
            pooled
                .broadcast_div(&norm.clamp(1e-12, f64::MAX).map_err(runtime)?)
                .map_err(runtime)?
        } else {
            pooled
        };
        pooled.to_vec2::<f32>().map_err(runtime)
    }
}

impl Embedder for BertEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Embedding>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.iter().map(String::as_str).collect::<Vec<_>>(), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let mut out: Vec<Embedding> = vec![Vec::new(); texts.len()];
        for batch in plan_batches(&lengths, self.config.max_batch, self.config.token_budget) {
            let refs: Vec<&tokenizers::Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            for (i, vector) in batch.into_iter().zip(self.forward(&refs)?) {
                out[i] = vector;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::write_tiny_bert;

    fn tiny(max_seq_len: usize, config: EmbedderConfig) -> (tempfile::TempDir, BertEmbedder) {
        let dir = tempfile::tempdir().expect("tmp");
        write_tiny_bert(dir.path(), max_seq_len).expect("write model");
        let model = BertEmbedder::load(dir.path(), &config).expect("load");
        (dir, model)
    }

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn reads_the_sentence_transformers_config() {
        let (_dir, model) = tiny(64, EmbedderConfig::default());
        let info = model.info();
        assert_eq!(
            (info.dim, info.pooling, info.normalize, info.max_seq_len),
            (32, Pooling::Mean, true, 64)
        );
        assert_eq!(info.special_tokens, 2);
        assert_eq!(info.fingerprint.len(), 16);
    }

    #[test]
    fn padding_and_batching_do_not_change_vectors() {
        let texts = strings(&[
            "hello",
            "the cat and the dog in the folder of the knowledge base",
            "search",
            "a vector store for text chunks and a model to embed them",
        ]);
        let (_dir, mut batched) = tiny(
            64,
            EmbedderConfig {
                max_batch: 8,
                token_budget: 1024,
                ..EmbedderConfig::default()
            },
        );
        // Exact on the f32 path; a call small enough for the f16 one differs by f16 rounding
        // (`small_calls_match_the_f32_path`).
        batched.set_small_rows(0);
        let together = batched.embed(&texts).expect("embed");
        assert_eq!(together.len(), texts.len());
        for (text, vector) in texts.iter().zip(&together) {
            let alone = batched.embed(std::slice::from_ref(text)).expect("embed");
            assert!(
                max_diff(&alone[0], vector) < 1e-5,
                "{text}: padding changed the vector"
            );
            let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5);
        }
        assert!(
            max_diff(&together[0], &together[2]) > 1e-3,
            "distinct texts, distinct vectors"
        );
        // Results come back in input order whatever the batching order.
        let reordered = batched
            .embed(&[texts[3].clone(), texts[0].clone()])
            .expect("embed");
        assert!(
            max_diff(&reordered[0], &together[3]) < 1e-5
                && max_diff(&reordered[1], &together[0]) < 1e-5
        );
    }

    #[test]
    fn truncates_at_the_window() {
        let (_dir, model) = tiny(16, EmbedderConfig::default());
        let long = "the cat ".repeat(50);
        let longer = format!("{long} and the dog and the fish");
        let v = model.embed(&[long, longer]).expect("embed");
        assert!(
            max_diff(&v[0], &v[1]) < 1e-6,
            "text past the window must not matter"
        );
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let dir = tempfile::tempdir().expect("tmp");
        let err =
            BertEmbedder::load(dir.path(), &EmbedderConfig::default()).expect_err("empty dir");
        assert!(err.to_string().contains("config.json"), "{err}");
        assert!(err.is_user_error());
    }
}

#[cfg(test)]
mod against_candle_transformers {
    //! The packed encoder against candle-transformers' padded, masked `BertModel`: an
    //! independent implementation of the same weights.
    use super::*;
    use candle_transformers::models::bert::BertModel;

    #[test]
    fn packed_encoder_equals_the_padded_reference() {
        let dir = tempfile::tempdir().expect("tmp");
        crate::testing::write_tiny_bert(dir.path(), 64).expect("model");
        let mut ours = BertEmbedder::load(dir.path(), &EmbedderConfig::default()).expect("load");
        // The f32 path; the f16 one for small calls is held to it below.
        ours.set_small_rows(0);
        let texts: Vec<String> = [
            "hello world",
            "the cat and the dog in the folder",
            "a",
            "search the vector store for the model",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let got = ours.embed(&texts).expect("embed");

        let config: Config =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).expect("read"))
                .expect("config");
        let weights = std::fs::read(dir.path().join("model.safetensors")).expect("weights");
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu).expect("vb");
        let reference = BertModel::load(vb, &config).expect("reference");
        let encodings: Vec<_> = texts
            .iter()
            .map(|t| ours.tokenizer().encode(t.as_str(), true).expect("enc"))
            .collect();
        let width = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .expect("texts");
        for (enc, vector) in encodings.iter().zip(&got) {
            let n = enc.get_ids().len();
            let mut ids = enc.get_ids().to_vec();
            ids.resize(width, 0);
            let mask: Vec<u32> = (0..width).map(|i| u32::from(i < n)).collect();
            let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .expect("ids");
            let mask = Tensor::new(mask.as_slice(), &Device::Cpu)
                .and_then(|t| t.unsqueeze(0))
                .expect("mask");
            let hidden = reference
                .forward(&ids, &ids.zeros_like().expect("zeros"), Some(&mask))
                .expect("forward");
            let mean = hidden
                .narrow(1, 0, n)
                .and_then(|t| t.mean(1))
                .and_then(|t| t.squeeze(0))
                .expect("mean");
            let expected: Vec<f32> = mean.to_vec1().expect("vec");
            let norm = expected.iter().map(|x| x * x).sum::<f32>().sqrt();
            for (a, b) in vector.iter().zip(&expected) {
                assert!((a - b / norm).abs() < 1e-5, "{a} vs {}", b / norm);
            }
        }
    }

    /// A query-sized call goes through the packed f16 weights (where the CPU has AVX-512):
    /// its vectors stay within f16 rounding of the f32 path's.
    #[test]
    fn small_calls_match_the_f32_path() {
        let dir = tempfile::tempdir().expect("tmp");
        crate::testing::write_tiny_bert(dir.path(), 64).expect("model");
        let mut model = BertEmbedder::load(dir.path(), &EmbedderConfig::default()).expect("load");
        let texts: Vec<String> = ["hello world", "the cat and the dog in the folder"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        model.set_small_rows(0);
        let f32_path = model.embed(&texts).expect("embed");
        model.set_small_rows(crate::encoder::SMALL_ROWS);
        let small = model.embed(&texts).expect("embed");
        let mut moved = 0f32;
        for (a, b) in f32_path.iter().zip(&small) {
            let cosine: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!(cosine > 0.9999, "cosine {cosine}");
            moved = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(moved, f32::max);
        }
        if pulp::x86::V4::try_new().is_some() {
            assert!(moved > 0.0, "the packed path was not taken");
        }
    }
}
