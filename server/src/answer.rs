//! The retrieval-augmented prompt as chat messages: the one conversion `lore ask` and
//! `POST /v1/ask` share, so both ask the model the same way.

use lore_finetune::chat::{Message, Role};
use lore_retrieve::prompt::{Prompt, PromptRole, STOP_SEQUENCES};

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

/// Stop sequences for an answer: the caller's first (a remote endpoint may take only four),
/// then those that end a grounded answer.
pub fn stops(user: &[String]) -> Vec<String> {
    let mut stop = user.to_vec();
    stop.extend(STOP_SEQUENCES.iter().map(|s| s.to_string()));
    stop
}
