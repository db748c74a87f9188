//! The generation loop: prefill the prompt, then sample token by token with the KV cache,
//! streaming text as it becomes valid UTF-8, until an end token, a stop sequence or the token
//! budget.

use std::time::Instant;

use tokenizers::Tokenizer;

use crate::lora::{Adapter, LoraRun};
use crate::model::{CausalLm, KvCache, to_vec};
use crate::sampling::{Sampler, SamplingConfig};
use crate::{Error, Result};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: String,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Generation stops before any of these strings (they are not returned).
    pub stop: Vec<String>,
    /// A loaded adapter's name ([`crate::runtime::LanguageModel::add_adapter`]); `None` runs
    /// the base model.
    pub adapter: Option<String>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn (end-of-turn or end-of-text token) or a stop sequence came.
    Stop,
    /// `max_tokens` were generated.
    Length,
    /// The caller's callback asked to stop (e.g. a client went away).
    Cancelled,
}

/// The outcome, with counts and timings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish_reason: FinishReason,
    pub prefill_s: f64,
    pub decode_s: f64,
}

/// Runs `request`, calling `on_text` with each new piece of text; `on_text` returns `false`
/// to stop early.
///
/// Fails when the prompt does not fit the context window, or `max_tokens` is 0.
pub fn generate(
    model: &CausalLm,
    adapter: Option<&Adapter>,
    tokenizer: &Tokenizer,
    end_tokens: &[u32],
    request: &GenerateRequest,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    if request.max_tokens == 0 {
        return Err(Error::Request("max tokens must be at least 1".into()));
    }
    request.sampling.validate().map_err(Error::Request)?;
    let prompt = tokenizer
        .encode(request.prompt.as_str(), false)
        .map_err(|e| Error::Tokenizer(e.to_string()))?
        .get_ids()
        .to_vec();
    if prompt.is_empty() {
        return Err(Error::Request("the prompt is empty".into()));
    }
    let context = model.config.context;
    if prompt.len() >= context {
        return Err(Error::Request(format!(
            "the prompt is {} tokens; the model's context holds {context}",
            prompt.len()
        )));
    }
    let budget = request.max_tokens.min(context - prompt.len());
    let mut cache = KvCache::default();
    let lora = adapter.map(LoraRun::inference);
    let mut sampler = Sampler::new(request.sampling.clone());
    let t = Instant::now();
    let mut logits = to_vec(&model.forward_with(&prompt, 0, &mut cache, lora.as_ref())?)?;
    let prefill_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut history = prompt.clone();
    let mut generated: Vec<u32> = Vec::new();
    let mut text = String::new();
    let mut finish = FinishReason::Length;
    while generated.len() < budget {
        let next = sampler.sample(&mut logits, &history);
        if end_tokens.contains(&next) {
            finish = FinishReason::Stop;
            break;
        }
        generated.push(next);
        history.push(next);
        // Decode everything so far and emit what is new: byte-level BPE tokens can split a
        // character, which decodes to U+FFFD until its other bytes arrive.
        let full = tokenizer
            .decode(&generated, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        if let Some(cut) = request
            .stop
            .iter()
            .filter_map(|s| full.find(s.as_str()))
            .min()
        {
            let piece = full[text.len().min(cut)..cut].to_string();
            if !piece.is_empty() {
                on_text(&piece);
            }
            text = full[..cut].to_string();
            finish = FinishReason::Stop;
            break;
        }
        if !full.ends_with('\u{FFFD}') && full.len() > text.len() && full.starts_with(&text) {
            if !on_text(&full[text.len()..]) {
                text = full;
                finish = FinishReason::Cancelled;
                break;
            }
            text = full;
        }
        if generated.len() == budget {
            break;
        }
        logits =
            to_vec(&model.forward_with(&[next], history.len() - 1, &mut cache, lora.as_ref())?)?;
    }
    Ok(Generation {
        text,
        prompt_tokens: prompt.len(),
        completion_tokens: generated.len(),
        finish_reason: finish,
        prefill_s,
        decode_s: t.elapsed().as_secs_f64(),
    })
}
