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
    /// Generation stops after this many sentences (see [`sentence_cut`]); `None`: no limit.
    pub max_sentences: Option<usize>,
}

/// Words whose period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "st", "no", "fig", "approx",
];

/// The byte offset just after the `n`-th sentence of `text`, once the next one has begun: a
/// `.`, `!` or `?` followed by whitespace, outside `code spans`, not after a single letter,
/// a digit-only word or a common abbreviation. `None` while `text` holds `n` sentences or
/// fewer (the last one may still be growing).
pub fn sentence_cut(text: &str, n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let mut in_code = false;
    let mut count = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '`' => in_code = !in_code,
            '.' | '!' | '?' if !in_code => {
                let next_is_space = chars.peek().is_some_and(|(_, next)| next.is_whitespace());
                if !next_is_space {
                    continue;
                }
                let word = text[..i]
                    .rsplit(|c: char| c.is_whitespace() || c == '(')
                    .next()
                    .unwrap_or("")
                    .to_lowercase();
                // "J.", "e.g.", "U.S.": an initial, a listed word, or dotted letters.
                let abbreviation = word.chars().count() == 1
                    || word.contains('.')
                    || ABBREVIATIONS.contains(&word.as_str());
                if c == '.' && abbreviation {
                    continue;
                }
                count += 1;
                if count == n {
                    return Some(i + c.len_utf8());
                }
            }
            _ => {}
        }
    }
    None
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
        let at_stop = request
            .stop
            .iter()
            .filter_map(|s| full.find(s.as_str()))
            .min();
        let after_sentences = request.max_sentences.and_then(|n| sentence_cut(&full, n));
        if let Some(cut) = at_stop.into_iter().chain(after_sentences).min() {
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

#[cfg(test)]
mod tests {
    use super::sentence_cut;

    #[test]
    fn sentences_are_cut_after_the_nth_once_the_next_begins() {
        let lincoln =
            "Lincoln was born in Kentucky [2]. He was raised in Indiana. He became a lawyer.";
        let one = sentence_cut(lincoln, 1).expect("cut");
        assert_eq!(&lincoln[..one], "Lincoln was born in Kentucky [2].");
        let two = sentence_cut(lincoln, 2).expect("cut");
        assert_eq!(
            &lincoln[..two],
            "Lincoln was born in Kentucky [2]. He was raised in Indiana."
        );
        // The last sentence may still grow: no cut without what follows it.
        assert_eq!(sentence_cut("One. Two", 2), None);
        assert_eq!(sentence_cut("One. Two.", 2), None);
        assert_eq!(sentence_cut("anything", 0), None);
    }

    #[test]
    fn abbreviations_initials_versions_and_code_do_not_end_sentences() {
        let text = "Use e.g. `cargo build --release. now` or J. Smith's U.S. tool v1.2 on it. Then stop. More";
        let cut = sentence_cut(text, 1).expect("cut");
        assert!(text[..cut].ends_with("on it."), "{}", &text[..cut]);
        assert!(sentence_cut("Is it? Yes! Done. x", 3).is_some());
    }
}
