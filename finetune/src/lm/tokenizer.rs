//! A `tokenizers` tokenizer rebuilt from a GGUF file's metadata, for models that ship no
//! `tokenizer.json` (the default SmolLM2 GGUF among them).
//!
//! Supported: `tokenizer.ggml.model = "gpt2"` (byte-level BPE). The pre-tokenizer follows
//! `tokenizer.ggml.pre`: `smollm` splits digits one by one before the byte-level split, as the
//! model's original `tokenizer.json` does; `qwen2` uses Qwen2's split regex. A `tokenizer.json`
//! next to the GGUF file takes precedence over all this (see `runtime`). Control and user-defined tokens (token types 3 and
//! 4) become special tokens, so `<|im_start|>` stays one token.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::SplitDelimiterBehavior;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use crate::{Error, Result};

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn meta<'a>(content: &'a Content, key: &str) -> Result<&'a Value> {
    content
        .metadata
        .get(key)
        .ok_or_else(|| Error::Metadata(format!("no `{key}`")))
}

fn strings(content: &Content, key: &str) -> Result<Vec<String>> {
    meta(content, key)?
        .to_vec()
        .map_err(|e| Error::Metadata(format!("`{key}`: {e}")))?
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|e| Error::Metadata(format!("`{key}`: {e}")))
        })
        .collect()
}

/// Builds the tokenizer a GGUF file describes.
///
/// Fails when the file names another tokenizer model than byte-level BPE, or its vocabulary
/// or merges are missing or malformed.
pub fn from_gguf(content: &Content) -> Result<Tokenizer> {
    let model = meta(content, "tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| Error::Metadata(e.to_string()))?;
    if model != "gpt2" {
        return Err(Error::Tokenizer(format!(
            "tokenizer model `{model}` is not supported (byte-level BPE, `gpt2`, is)"
        )));
    }
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges = strings(content, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Metadata(format!("merge `{m}` is not two tokens")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| Error::Tokenizer(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = content
        .metadata
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
        "" | "default" | "gpt2" => byte_level.into(),
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        // Qwen2's split: single digits, letters with at most one leading non-letter, and
        // whitespace runs that leave the last space to the next word.
        "qwen2" => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        other => {
            return Err(Error::Tokenizer(format!(
                "pre-tokenizer `{other}` is not supported; put the model's tokenizer.json next to the GGUF file"
            )));
        }
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    // Control (3) and user-defined (4) tokens are matched whole, before BPE.
    if let Ok(types) = meta(content, "tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().map_err(|e| Error::Metadata(e.to_string())))
    {
        let special: Vec<AddedToken> = types
            .iter()
            .zip(&tokens)
            .filter(|(t, _)| matches!(t.to_i32(), Ok(3 | 4)))
            .map(|(_, tok)| AddedToken::from(tok.clone(), true))
            .collect();
        tokenizer
            .add_special_tokens(special)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
    }
    Ok(tokenizer)
}
