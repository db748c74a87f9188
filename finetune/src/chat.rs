//! Chat templates: turning messages into the exact text a model was trained on.
//!
//! ChatML (`<|im_start|>role\n…<|im_end|>\n`) is built in: SmolLM2 and Qwen2 use it. A
//! model's template is recognised from its GGUF `tokenizer.chat_template` or
//! `tokenizer_config.json`; templates that are not ChatML are refused by name rather than
//! rendered wrongly. Training (`train::data`) uses the same function, so tuning and serving
//! agree.

use serde::{Deserialize, Serialize};

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// A chat template lore can render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    ChatMl,
}

/// The ChatML end-of-turn marker: generation stops there, and training always includes it.
pub const CHATML_END: &str = "<|im_end|>";

impl ChatTemplate {
    /// Recognises a model's Jinja template; `None` when it is not one lore renders.
    pub fn recognise(jinja: &str) -> Option<Self> {
        (jinja.contains("<|im_start|>") && jinja.contains("<|im_end|>"))
            .then_some(ChatTemplate::ChatMl)
    }

    /// The text for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt` (for generation), closed otherwise (for training).
    pub fn render(self, messages: &[Message], add_generation_prompt: bool) -> String {
        match self {
            ChatTemplate::ChatMl => {
                let mut out = String::new();
                for m in messages {
                    out.push_str("<|im_start|>");
                    out.push_str(m.role.name());
                    out.push('\n');
                    out.push_str(&m.content);
                    out.push_str(CHATML_END);
                    out.push('\n');
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
                out
            }
        }
    }

    /// Text that ends the assistant's turn.
    pub fn end_of_turn(self) -> &'static str {
        match self {
            ChatTemplate::ChatMl => CHATML_END,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_matches_the_reference_layout() {
        let text = ChatTemplate::ChatMl.render(
            &[
                Message::new(Role::System, "Be brief."),
                Message::new(Role::User, "Hi"),
            ],
            true,
        );
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_chatml_jinja_template_is_recognised_and_others_are_not() {
        let smol = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        assert_eq!(ChatTemplate::recognise(smol), Some(ChatTemplate::ChatMl));
        assert_eq!(
            ChatTemplate::recognise("[INST] {{ message }} [/INST]"),
            None
        );
    }
}
