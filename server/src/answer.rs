//! What `lore ask`, `lore eval answers` and `POST /v1/ask` share, so that all of them answer
//! the same way: the retrieval-augmented prompt as chat messages, the stop sequences, and the
//! grounding verdict (decline before generating when retrieval found nothing close, recognise
//! an answer that declines, flag sentences no passage supports).

use lore_finetune::AnswerEnd;
use lore_finetune::{Message, Role};
use lore_retrieve::grounding;
use lore_retrieve::prompt::{Prompt, PromptRole, STOP_SEQUENCES};
use serde::Serialize;
use utoipa::ToSchema;

/// The prompt's messages in the language model's types.
pub fn messages(prompt: &Prompt) -> Vec<Message> {
    prompt
        .messages
        .iter()
        .map(|m| {
            let role = match m.role {
                PromptRole::System => Role::System,
                PromptRole::User => Role::User,
                PromptRole::Assistant => Role::Assistant,
            };
            Message::new(role, m.content.clone())
        })
        .collect()
}

/// Sentences a direct answer stops after unless told otherwise ("a sentence or two": small
/// models otherwise copy the rest of the passage after the answer).
pub const DEFAULT_MAX_SENTENCES: usize = 2;

/// Where an answer ends: a direct one after `requested` sentences (0: no limit; default
/// [`DEFAULT_MAX_SENTENCES`]) and at its first blank line (what small models write after one
/// is a second, unasked answer); a reasoned one (`cot`) is left to run its paragraphs.
pub fn answer_end(requested: Option<usize>, chain_of_thought: bool) -> AnswerEnd {
    if chain_of_thought {
        return AnswerEnd::default();
    }
    AnswerEnd {
        max_sentences: match requested {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(DEFAULT_MAX_SENTENCES),
        },
        blank_line: true,
    }
}

/// Stop sequences for an answer: the caller's first (a remote endpoint may take only four),
/// then those that end a grounded answer.
pub fn stops(user: &[String]) -> Vec<String> {
    let mut stop = user.to_vec();
    stop.extend(STOP_SEQUENCES.iter().map(|s| s.to_string()));
    stop
}

/// When lore declines to answer, and when it flags an answer as unsupported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grounding {
    /// Decline without asking the model when the best passage's cosine similarity to the
    /// question is below this (dense and hybrid retrieval only). 0 turns the gate off.
    pub min_dense: f32,
    /// A sentence with less than this share of its content words in its passages is flagged.
    pub min_sentence_support: f32,
}

impl Default for Grounding {
    fn default() -> Self {
        Self {
            min_dense: grounding::DEFAULT_MIN_DENSE,
            min_sentence_support: grounding::DEFAULT_MIN_SENTENCE_SUPPORT,
        }
    }
}

impl Grounding {
    /// Whether retrieval found nothing close enough to answer from, so that the model is not
    /// asked (it would answer from memory: small models do, whatever the prompt says).
    pub fn declines_before_generating(
        &self,
        found_passages: bool,
        best_dense: Option<f32>,
    ) -> bool {
        !found_passages || best_dense.is_some_and(|s| s < self.min_dense)
    }
}

/// Who decided that the answer declines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeclinedBy {
    /// No passage came close enough to the question; the model was not asked.
    Retrieval,
    /// The model read the passages and said they do not hold the answer.
    Model,
    /// The answer only restated the question ("The flag that uploads to S3 is the flag [2]."):
    /// small models write that when the passages do not hold the answer, or when they
    /// cannot find it there, so it counts as not answering.
    Restated,
}

/// What lore can say about an answer beyond its text.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Verdict {
    /// The answer says the knowledge base does not hold the answer.
    pub abstained: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declined_by: Option<DeclinedBy>,
    /// The answer states something and every sentence of it is supported by its passages.
    pub grounded: bool,
    /// Share of the words the answer adds to the question that its passages hold, 0–1.
    pub support: f32,
    /// Answer sentences that no passage supports.
    pub unsupported: Vec<String>,
    /// The best passage's cosine similarity to the question (dense and hybrid retrieval).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_dense: Option<f32>,
}

impl Verdict {
    /// The verdict on a question declined before generation.
    pub fn declined(best_dense: Option<f32>) -> Self {
        Self {
            abstained: true,
            declined_by: Some(DeclinedBy::Retrieval),
            grounded: false,
            support: 0.0,
            unsupported: Vec::new(),
            best_dense,
        }
    }

    /// Judges a generated answer against the prompt's passages.
    pub fn judge(prompt: &Prompt, answer: &str, best_dense: Option<f32>, g: &Grounding) -> Self {
        if grounding::declines(answer) {
            return Self {
                declined_by: Some(DeclinedBy::Model),
                ..Self::declined(best_dense)
            };
        }
        let support = grounding::support(
            answer,
            prompt.question(),
            &prompt.passages(),
            g.min_sentence_support,
        );
        let unsupported: Vec<String> = support.unsupported().map(|s| s.text.clone()).collect();
        if support.added_words == 0 && !prompt.sources.is_empty() {
            return Self {
                declined_by: Some(DeclinedBy::Restated),
                ..Self::declined(best_dense)
            };
        }
        Self {
            abstained: false,
            declined_by: None,
            grounded: !prompt.sources.is_empty() && unsupported.is_empty(),
            support: support.score,
            unsupported,
            best_dense,
        }
    }
}

/// The messages that ask the model to turn the last question of a conversation into one
/// that stands alone ("and what about its default?" → "What is the default of `--jobs`?"),
/// so that retrieval searches for what the user means.
pub fn rewrite_request(history: &[Message], question: &str) -> Vec<Message> {
    let mut conversation = String::new();
    for m in history {
        let who = match m.role {
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::System => continue,
        };
        // Long earlier answers add little to what a pronoun refers to; keep their start.
        let text: String = m.content.chars().take(600).collect();
        conversation.push_str(&format!("{who}: {}\n", text.trim()));
    }
    vec![
        Message::new(
            Role::System,
            "You rewrite the user's last question so that it can be understood without the \
             conversation: replace pronouns and references with what they refer to. Reply \
             with the rewritten question only."
                .to_string(),
        ),
        Message::new(
            Role::User,
            format!(
                "Conversation:\n{conversation}\nLast question: {}\n\nRewritten question:",
                question.trim()
            ),
        ),
    ]
}

/// The request that rewrites `question` given `history`: greedy, one line, a few tokens (the
/// one form `lore ask --history` and `/v1/ask`'s `messages` share).
pub fn rewrite_chat(
    history: &[Message],
    question: &str,
    sampling: lore_finetune::SamplingConfig,
) -> lore_finetune::ChatRequest {
    lore_finetune::ChatRequest {
        messages: rewrite_request(history, question),
        max_tokens: 64,
        sampling,
        stop: vec!["\n".into()],
        adapter: None,
        end: AnswerEnd::default(),
        ..Default::default()
    }
}

/// The standalone question from the model's reply to [`rewrite_request`]; the original
/// question when the reply is empty or not a question-sized line.
pub fn standalone_question(reply: &str, question: &str) -> String {
    let line = reply
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let line = line
        .trim_start_matches("Rewritten question:")
        .trim()
        .trim_matches(|c| c == '"' || c == '“' || c == '”')
        .trim();
    let limit = 3 * question.len() + 200;
    if line.is_empty() || line.len() > limit {
        question.trim().to_string()
    } else {
        line.to_string()
    }
}

/// Splits OpenAI-shaped `messages` into the conversation before the last question and the
/// question itself (the last message, which must be the user's).
pub fn split_conversation(messages: &[Message]) -> Result<(&[Message], &str), String> {
    match messages.split_last() {
        None => Err("`messages` is empty".into()),
        Some((last, _)) if last.role != Role::User => {
            Err("the last message must be the user's question".into())
        }
        Some((last, _)) if last.content.trim().is_empty() => {
            Err("the last message (the question) is empty".into())
        }
        Some((last, history)) => Ok((history, last.content.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_reply_is_cleaned_or_falls_back_to_the_question() {
        assert_eq!(
            standalone_question(
                "\n Rewritten question: \"What is the default of --jobs?\"\nExtra",
                "and its default?"
            ),
            "What is the default of --jobs?"
        );
        assert_eq!(
            standalone_question("   ", "and its default?"),
            "and its default?"
        );
        assert_eq!(
            standalone_question(&"x".repeat(500), "why?"),
            "why?",
            "a runaway reply is not a question"
        );
    }

    #[test]
    fn the_conversation_reaches_the_rewrite_prompt_and_the_last_message_is_the_question() {
        let messages = vec![
            Message::new(Role::User, "What does cargo build --release do?"),
            Message::new(Role::Assistant, "It builds with optimizations [1]."),
            Message::new(Role::User, "Where does it put the output?"),
        ];
        let (history, question) = split_conversation(&messages).expect("well-formed");
        assert_eq!(question, "Where does it put the output?");
        let request = rewrite_request(history, question);
        assert!(
            request[1]
                .content
                .contains("User: What does cargo build --release do?")
        );
        assert!(request[1].content.contains("Assistant: It builds"));
        assert!(
            request[1]
                .content
                .contains("Last question: Where does it put the output?")
        );
        assert!(split_conversation(&messages[..2]).is_err());
        assert!(split_conversation(&[]).is_err());
    }
}
