//! The generation loop: prefill the prompt, then sample token by token with the KV cache,
//! streaming text as it becomes valid UTF-8, until an end token, a stop sequence or the token
//! budget.

use std::time::Instant;

use tokenizers::Tokenizer;

use crate::generation::json_mode::JsonPrefix;
use crate::generation::sampling::{Sampler, SamplingConfig};
use crate::lm::lora::{Adapter, LoraRun};
use crate::lm::model::{CausalLm, KvCache, to_vec};
use crate::{Error, Result};

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct GenerateRequest {
    pub prompt: String,
    pub max_tokens: usize,
    pub sampling: SamplingConfig,
    /// Generation stops before any of these strings (they are not returned).
    pub stop: Vec<String>,
    /// A loaded adapter's name ([`crate::generation::runtime::LanguageModel::add_adapter`]); `None` runs
    /// the base model.
    pub adapter: Option<String>,
    /// Where a direct answer ends early (see [`answer_cut`]); the default: nowhere.
    pub end: AnswerEnd,
    /// Constrain the text to one JSON object ([`crate::generation::json_mode`]).
    pub json: bool,
    /// Return each generated token's log-probability and this many alternatives (0–20).
    pub logprobs: Option<usize>,
}

/// Where a direct answer ends besides stop strings and the token budget. Small models keep
/// writing after they have answered (a second, unasked answer after a blank line; the rest of
/// the passage copied out), so an answer is cut at a sentence count and at its first blank
/// line, except where the text announces more ("For example:") or sits inside a code fence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerEnd {
    /// Stop after this many sentences; `None`: no limit.
    pub max_sentences: Option<usize>,
    /// Stop at the first blank line outside a code fence that does not follow a colon.
    pub blank_line: bool,
}

/// Words whose period does not end a sentence.
const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "st", "no", "fig", "approx",
];

/// The byte offset where `text` should end under `end`, once that is certain: just after the
/// `n`-th sentence when the next one has begun, or at a blank line.
///
/// A sentence ends at `.`, `!` or `?` followed by whitespace, outside `code spans` and
/// ```` ``` ```` fences, not after a single letter, a digit-only word or a common
/// abbreviation. A blank line inside a fence, or after a line ending with `:` (an answer
/// introducing its example or list), does not end the answer; nor does one before any text.
pub fn answer_cut(text: &str, end: AnswerEnd) -> Option<usize> {
    let max_sentences = end.max_sentences.filter(|n| *n > 0);
    if max_sentences.is_none() && !end.blank_line {
        return None;
    }
    let mut in_fence = false;
    let mut in_code = false;
    let mut count = 0;
    let mut line_start = 0;
    // The rest of a fence's opening or closing line is not prose.
    let mut fence_line = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if i == line_start && text[i..].trim_start_matches([' ', '\t']).starts_with("```") {
            in_fence = !in_fence;
            in_code = false;
            fence_line = true;
        }
        match c {
            '\n' => {
                line_start = i + 1;
                fence_line = false;
                // A code span does not run past its line.
                in_code = false;
                let blank_follows = text[i + 1..].starts_with('\n');
                let before = text[..i].trim_end();
                if end.blank_line
                    && blank_follows
                    && !in_fence
                    && !before.is_empty()
                    && !before.ends_with(':')
                {
                    return Some(before.len());
                }
            }
            _ if in_fence || fence_line => {}
            '`' => in_code = !in_code,
            '.' | '!' | '?' if !in_code => {
                let Some(n) = max_sentences else { continue };
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
/// A token as OpenAI's `logprobs` report it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// A generated token's log-probability and the most likely alternatives at its place.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Logprob {
    #[serde(flatten)]
    pub chosen: TokenLogprob,
    pub top_logprobs: Vec<TokenLogprob>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    /// Per generated token, when the request asked for them: log-softmax of the logits the
    /// token was drawn from (after the repetition penalty, before temperature).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<Logprob>>,
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
/// The model's side of a generation: weights, adapter, tokenizer, and what ends a turn.
#[derive(Debug, Clone, Copy)]
pub struct Runner<'a> {
    pub model: &'a CausalLm,
    pub adapter: Option<&'a Adapter>,
    pub tokenizer: &'a Tokenizer,
    pub end_tokens: &'a [u32],
    /// Each token's bytes (JSON mode and log-probabilities need them); see
    /// [`crate::generation::json_mode::token_bytes`].
    pub token_bytes: Option<&'a [Vec<u8>]>,
}

pub fn generate(
    runner: Runner<'_>,
    request: &GenerateRequest,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation> {
    let Runner {
        model,
        adapter,
        tokenizer,
        end_tokens,
        token_bytes,
    } = runner;
    if request.max_tokens == 0 {
        return Err(Error::Request("max tokens must be at least 1".into()));
    }
    request.sampling.validate().map_err(Error::Request)?;
    if request.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
        return Err(Error::Request(format!(
            "at most {MAX_TOP_LOGPROBS} alternatives per token"
        )));
    }
    let table = match (request.json || request.logprobs.is_some(), token_bytes) {
        (false, _) => &[][..],
        (true, Some(t)) => t,
        (true, None) => {
            return Err(Error::Request(
                "JSON mode and log-probabilities need the token table".into(),
            ));
        }
    };
    let mut json = request.json.then(JsonPrefix::default);
    let mut logprobs = request.logprobs.map(|_| Vec::new());
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
        sampler.penalize(&mut logits, &history);
        // Log-probabilities are of the distribution the token is drawn from: after the
        // repetition penalty, before temperature (so greedy's pick is always the top one).
        let scored = logprobs.is_some().then(|| logits.clone());
        let next = match json.as_mut() {
            None => sampler.choose(&logits),
            Some(state) if state.is_done() => {
                finish = FinishReason::Stop;
                break;
            }
            Some(state) => {
                // End tokens that are not marked special still have text; inside a JSON
                // object they would end it unclosed.
                // Tokens left after this one: enough must remain to close the object.
                let after = budget - generated.len() - 1;
                let accept = |t: u32| {
                    !end_tokens.contains(&t)
                        && table
                            .get(t as usize)
                            .is_some_and(|b| state.accepts_within(b, after))
                };
                let Some(t) = sampler.choose_where(&mut logits, accept) else {
                    // No token continues the object (a vocabulary without `{`).
                    return Err(Error::Unsupported(
                        "this model's vocabulary cannot write JSON".into(),
                    ));
                };
                state.push(&table[t as usize]);
                t
            }
        };
        if let (Some(list), Some(scores)) = (logprobs.as_mut(), scored.as_deref())
            && !end_tokens.contains(&next)
        {
            list.push(logprob(scores, next, request.logprobs.unwrap_or(0), table));
        }
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
        let answer_end = answer_cut(&full, request.end);
        if let Some(cut) = at_stop.into_iter().chain(answer_end).min() {
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
        // The object just closed: done (even on the budget's last token), without another
        // forward pass.
        if json.as_ref().is_some_and(JsonPrefix::is_done) {
            finish = FinishReason::Stop;
            break;
        }
        if generated.len() == budget {
            break;
        }
        logits =
            to_vec(&model.forward_with(&[next], history.len() - 1, &mut cache, lora.as_ref())?)?;
    }
    if let Some(list) = logprobs.as_mut() {
        // Tokens past a stop string's cut are not part of the text.
        let mut bytes = 0;
        list.retain(|l| {
            let keep = bytes < text.len();
            bytes += l.chosen.bytes.len();
            keep
        });
    }
    Ok(Generation {
        text,
        logprobs,
        prompt_tokens: prompt.len(),
        completion_tokens: generated.len(),
        finish_reason: finish,
        prefill_s,
        decode_s: t.elapsed().as_secs_f64(),
    })
}

/// OpenAI's limit on `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `chosen`'s log-probability under `logits` and the `top` most likely tokens'.
fn logprob(logits: &[f32], chosen: u32, top: usize, table: &[Vec<u8>]) -> Logprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_total = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    let entry = |t: usize| {
        let bytes = table.get(t).cloned().unwrap_or_default();
        TokenLogprob {
            token: String::from_utf8_lossy(&bytes).into_owned(),
            logprob: logits[t] - log_total,
            bytes,
        }
    };
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let top = top.min(order.len());
    if top > 0 {
        order.select_nth_unstable_by(top - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(top);
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    }
    Logprob {
        chosen: entry(chosen as usize),
        top_logprobs: order.into_iter().take(top).map(entry).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::{AnswerEnd, answer_cut};

    fn sentence_cut(text: &str, n: usize) -> Option<usize> {
        let end = AnswerEnd {
            max_sentences: Some(n),
            blank_line: false,
        };
        answer_cut(text, end)
    }

    fn blank_line_cut(text: &str) -> Option<usize> {
        let end = AnswerEnd {
            max_sentences: None,
            blank_line: true,
        };
        answer_cut(text, end)
    }

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
        assert_eq!(
            answer_cut("One. Two. Three.\n\nFour", AnswerEnd::default()),
            None
        );
    }

    #[test]
    fn abbreviations_initials_versions_and_code_do_not_end_sentences() {
        let text = "Use e.g. `cargo build --release. now` or J. Smith's U.S. tool v1.2 on it. Then stop. More";
        let cut = sentence_cut(text, 1).expect("cut");
        assert!(text[..cut].ends_with("on it."), "{}", &text[..cut]);
        assert!(sentence_cut("Is it? Yes! Done. x", 3).is_some());
    }

    #[test]
    fn a_blank_line_ends_an_answer_unless_it_announces_more() {
        let second_answer = "Use `--locked` [2].\n\nQuestion: what else?";
        let cut = blank_line_cut(second_answer).expect("cut");
        assert_eq!(&second_answer[..cut], "Use `--locked` [2].");
        // "For example:" keeps its example, fences keep their blank lines, and the answer
        // ends at the first blank line after the fence closes.
        let example = "Use the `?` syntax [1]. For example:\n\n```toml\n[features]\n\nx = [\"dep?/f\"]\n```\n\nAnother answer.";
        let cut = blank_line_cut(example).expect("cut");
        assert!(example[..cut].ends_with("```"), "{}", &example[..cut]);
        assert!(example[..cut].contains("dep?/f"));
        // Sentences inside the fence do not count toward the limit.
        let end = AnswerEnd {
            max_sentences: Some(2),
            blank_line: true,
        };
        let code = "Add this [1]. For example:\n```\nfn a() {}. b. c. d.\n```\nThat is all. More.";
        let cut = answer_cut(code, end).expect("cut");
        assert!(code[..cut].ends_with("That is all."), "{}", &code[..cut]);
        // Leading blank lines are not an answer's end.
        assert_eq!(blank_line_cut("\n\nKentucky"), None);
    }
}
