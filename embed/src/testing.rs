//! Tiny random-weight models for tests: the real loading path, no downloads.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;

/// Words the tiny tokenizer knows; anything else becomes `[UNK]` or word pieces.
const WORDS: &str = "the a of and to in is was for on that with as by it at from this be are \
    lore knowledge base document chunk search vector store model embed text file folder \
    question answer rust python qdrant tantivy ##s ##ing ##ed hello world cat dog fish bird";

/// Writes a sentence-transformers-shaped folder holding a 2-layer, 32-wide random BERT with
/// mean pooling and normalisation, and a WordPiece tokenizer over a small vocabulary.
///
/// Fails only on I/O or serialisation errors.
pub fn write_tiny_bert(dir: &Path, max_seq_len: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    let words: Vec<&str> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        .into_iter()
        .chain(WORDS.split_whitespace())
        .collect();
    let vocab_size = words.len();
    let vocab_path = dir.join("vocab.txt");
    std::fs::write(&vocab_path, words.join("\n"))?;
    let vocab_path = vocab_path
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    let model = WordPiece::from_file(vocab_path)
        .unk_token("[UNK]".into())
        .build()
        .map_err(anyhow::Error::msg)?;
    let mut tokenizer = Tokenizer::new(model);
    let _ = tokenizer.with_normalizer(Some(BertNormalizer::default()));
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    tokenizer.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), 3),
        ("[CLS]".into(), 2),
    )));
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .map_err(anyhow::Error::msg)?;

    let config = serde_json::json!({
        "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "max_position_embeddings": 512, "type_vocab_size": 2,
        "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "model_type": "bert"
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config)?)?;
    let parsed: Config = serde_json::from_value(config)?;
    let varmap = VarMap::new();
    BertModel::load(
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        &parsed,
    )?;
    varmap.save(dir.join("model.safetensors"))?;

    std::fs::write(
        dir.join("1_Pooling/config.json"),
        r#"{"word_embedding_dimension": 32, "pooling_mode_mean_tokens": true, "pooling_mode_cls_token": false}"#,
    )?;
    std::fs::write(
        dir.join("sentence_bert_config.json"),
        format!(r#"{{"max_seq_length": {max_seq_len}}}"#),
    )?;
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
            {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
    )?;
    Ok(())
}
