//! Chat templates: turning messages into the exact text a model was trained on.
//!
//! A model's own Jinja template (GGUF `tokenizer.chat_template`, or `chat_template` in
//! `tokenizer_config.json`) is rendered with minijinja the way transformers renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`), so Llama-3,
//! Mistral, Gemma, Phi and Qwen templates all produce the text their models expect. ChatML
//! (`<|im_start|>role\n…<|im_end|>\n`) is built in for models that ship no template.
//! Training (`train::data`) renders through the same [`ChatTemplate`], so tuning and serving
//! agree.

use std::fmt;
use std::sync::Arc;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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

/// The ChatML end-of-turn marker.
pub const CHATML_END: &str = "<|im_end|>";

/// The name the compiled template is stored under in its environment.
const NAME: &str = "chat";

/// How a model formats a conversation: its own Jinja template or built-in ChatML. Cheap to
/// clone (the compiled template is shared).
#[derive(Clone)]
pub struct ChatTemplate {
    jinja: Option<Arc<Environment<'static>>>,
    bos_token: String,
    eos_token: String,
    /// What closes an assistant turn (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `</s>`):
    /// generation stops there, and training includes it in the trained span.
    end_of_turn: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("jinja", &self.jinja.is_some())
            .field("end_of_turn", &self.end_of_turn)
            .finish()
    }
}

impl ChatTemplate {
    /// Built-in ChatML, for models whose files carry no template but whose vocabulary has
    /// the ChatML markers.
    pub fn chatml() -> Self {
        Self {
            jinja: None,
            bos_token: String::new(),
            eos_token: CHATML_END.into(),
            end_of_turn: CHATML_END.into(),
        }
    }

    /// Compiles a model's Jinja chat template. `bos_token` and `eos_token` are the model's
    /// special tokens as text (templates write them out).
    ///
    /// Fails when the template does not parse, or cannot render a user/assistant exchange.
    pub fn from_jinja(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // transformers renders with these two on: block tags leave no blank lines behind.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Unsupported(format!("chat template syntax: {e}")))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        // Llama 3.1+ templates print today's date through this.
        env.add_function("strftime_now", |format: String| strftime_now(&format));
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| Error::Unsupported(format!("chat template does not parse: {e}")))?;
        let mut template = Self {
            jinja: Some(Arc::new(env)),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            end_of_turn: String::new(),
        };
        template.end_of_turn = template.probe_end_of_turn()?;
        Ok(template)
    }

    /// What the template writes right after an assistant reply, up to the first whitespace:
    /// the end-of-turn marker. A template that writes nothing there ends turns with EOS.
    fn probe_end_of_turn(&self) -> Result<String> {
        const REPLY: &str = "\u{2402}reply\u{2403}";
        let text = self.render(
            &[
                Message::new(Role::User, "\u{2402}question\u{2403}"),
                Message::new(Role::Assistant, REPLY),
            ],
            false,
        )?;
        let after = text
            .find(REPLY)
            .map(|p| &text[p + REPLY.len()..])
            .ok_or_else(|| {
                Error::Unsupported("the chat template does not write the assistant's reply".into())
            })?;
        let marker = after.split_whitespace().next().unwrap_or("");
        Ok(if marker.is_empty() {
            self.eos_token.clone()
        } else {
            marker.to_string()
        })
    }

    /// The text for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt` (for generation), closed otherwise (for training).
    ///
    /// A template that refuses system messages (Gemma's raises an error) gets the system
    /// text at the head of the first user message instead, as its model card advises.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let Some(env) = &self.jinja else {
            return Ok(render_chatml(messages, add_generation_prompt));
        };
        let run = |messages: &[Message]| {
            env.get_template(NAME).and_then(|t| {
                t.render(context! {
                    messages => as_values(messages),
                    add_generation_prompt => add_generation_prompt,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                })
            })
        };
        match run(messages) {
            Ok(text) => Ok(text),
            // With the system text folded in, a second refusal is about something else
            // ("roles must alternate"): that is the one to report.
            Err(first) => match fold_system(messages) {
                Some(folded) => run(&folded).map_err(|e| template_error(&e)),
                None => Err(template_error(&first)),
            },
        }
    }

    /// The beginning-of-sequence token the template writes ("" when the model names none).
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// Text that ends the assistant's turn.
    pub fn end_of_turn(&self) -> &str {
        &self.end_of_turn
    }

    /// The rendered conversation and the byte ranges a fine-tuning run trains on: each
    /// assistant reply from message `trained_from` on, with the end-of-turn marker that
    /// follows it (so the tuned model learns to stop); role headers and the other turns are
    /// context only.
    ///
    /// A reply's span starts where the template's generation prompt for it ends (the common
    /// prefix of the whole text and the conversation up to it with the assistant's turn
    /// opened), so a reply is never matched inside the system prompt, an earlier turn or its
    /// own header, and the whitespace before it (which tokenizers fold into its first word)
    /// is trained with it. Its text is then found from there, so templates that move text
    /// around (Mistral v0.3's system prompt in the last user turn) or trim replies (Llama-3,
    /// Gemma) are handled alike. Fails when a trained reply is not in the text: the template
    /// rewrites replies and a mask cannot be trusted.
    pub fn assistant_spans(
        &self,
        messages: &[Message],
        trained_from: usize,
    ) -> Result<(String, Vec<(usize, usize)>)> {
        let text = self.render(messages, false)?;
        let mut spans = Vec::new();
        let mut cursor = 0;
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let head = self.render(&messages[..i], true)?;
            let bound = common_prefix(&head, &text).max(cursor);
            let needle = m.content.trim();
            let Some(found) = text[bound..].find(needle).map(|p| bound + p) else {
                if i < trained_from {
                    // Context the template rewrote (reasoning stripped from earlier
                    // turns): nothing of it is trained, so nothing is lost.
                    continue;
                }
                return Err(Error::Request(format!(
                    "message {} (assistant) does not appear in the chat template's text, so its loss mask cannot be set",
                    i + 1
                )));
            };
            let start = if text[bound..found].trim().is_empty() {
                bound
            } else {
                found
            };
            let mut end = found + needle.len();
            // The marker, possibly after the whitespace a trimmed reply left behind.
            let rest = &text[end..];
            let gap = rest.len() - rest.trim_start().len();
            if !self.end_of_turn.is_empty() && rest[gap..].starts_with(self.end_of_turn.as_str()) {
                end += gap + self.end_of_turn.len();
            }
            if i >= trained_from {
                spans.push((start, end));
            }
            cursor = end;
        }
        Ok((text, spans))
    }
}

/// The length in bytes of the longest common prefix of `a` and `b`, at a char boundary.
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

/// Messages as the templates index them: `message['role']`, `message.content`.
fn as_values(messages: &[Message]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            Value::from(std::collections::BTreeMap::from([
                ("role", Value::from(m.role.name())),
                ("content", Value::from(m.content.as_str())),
            ]))
        })
        .collect()
}

fn render_chatml(messages: &[Message], add_generation_prompt: bool) -> String {
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

/// The conversation with its leading system message folded into the first user message;
/// `None` when there is no system message to fold.
fn fold_system(messages: &[Message]) -> Option<Vec<Message>> {
    let (first, rest) = messages.split_first()?;
    if first.role != Role::System {
        return None;
    }
    let mut out: Vec<Message> = rest.to_vec();
    match out.iter_mut().find(|m| m.role == Role::User) {
        Some(user) => user.content = format!("{}\n\n{}", first.content, user.content),
        None => out.insert(0, Message::new(Role::User, first.content.clone())),
    }
    Some(out)
}

fn template_error(e: &minijinja::Error) -> Error {
    // A template's own `raise_exception` message is the useful part ("roles must alternate").
    let detail = e.detail().map_or_else(|| e.to_string(), str::to_string);
    Error::Request(format!(
        "the model's chat template refused the messages: {detail}"
    ))
}

/// `strftime_now` for templates: today's date (UTC) in the handful of formats templates use.
fn strftime_now(format: &str) -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    let (year, month, day) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month_name = MONTHS[(month - 1) as usize];
    format
        .replace("%Y", &year.to_string())
        .replace("%m", &format!("{month:02}"))
        .replace("%d", &format!("{day:02}"))
        .replace("%B", month_name)
        .replace("%b", &month_name[..3])
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real templates, as their models' tokenizer_config.json ship them (Llama-3-8B-Instruct,
    /// gemma-2b-it, Mistral-7B-Instruct-v0.1, Phi-3-mini-4k-instruct, Qwen2.5-Instruct).
    const LLAMA3: &str = include_str!("../../../tests/fixtures/chat-templates/llama3.jinja");
    const GEMMA: &str = include_str!("../../../tests/fixtures/chat-templates/gemma.jinja");
    const MISTRAL: &str = include_str!("../../../tests/fixtures/chat-templates/mistral.jinja");
    const PHI3: &str = include_str!("../../../tests/fixtures/chat-templates/phi3.jinja");
    const QWEN25: &str = include_str!("../../../tests/fixtures/chat-templates/qwen2.5.jinja");

    fn chat() -> Vec<Message> {
        vec![
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, " Hello! "),
            Message::new(Role::User, "Bye"),
        ]
    }

    #[test]
    fn builtin_chatml_matches_the_reference_layout() {
        let text = ChatTemplate::chatml()
            .render(&chat()[..2], true)
            .expect("render");
        assert_eq!(
            text,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn llama3_renders_as_transformers_does() {
        let t =
            ChatTemplate::from_jinja(LLAMA3, "<|begin_of_text|>", "<|eot_id|>").expect("compile");
        assert_eq!(t.end_of_turn(), "<|eot_id|>");
        assert_eq!(
            t.render(&chat(), true).expect("render"),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn gemma_gets_the_system_text_in_the_first_user_turn() {
        let t = ChatTemplate::from_jinja(GEMMA, "<bos>", "<eos>").expect("compile");
        assert_eq!(t.end_of_turn(), "<end_of_turn>");
        assert_eq!(
            t.render(&chat(), true).expect("render"),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn a_template_refusal_is_a_request_error_with_the_templates_words() {
        let t = ChatTemplate::from_jinja(GEMMA, "<bos>", "<eos>").expect("compile");
        let err = t
            .render(
                &[Message::new(Role::User, "a"), Message::new(Role::User, "b")],
                true,
            )
            .expect_err("two user turns in a row");
        assert!(matches!(err, Error::Request(_)), "{err:?}");
        assert!(err.to_string().contains("must alternate"), "{err}");
    }

    #[test]
    fn mistral_and_phi3_end_turns_with_their_markers() {
        let m = ChatTemplate::from_jinja(MISTRAL, "<s>", "</s>").expect("compile");
        assert_eq!(m.end_of_turn(), "</s>");
        assert_eq!(
            m.render(&chat(), true).expect("render"),
            "<s>[INST] Be brief.\n\nHi [/INST] Hello! </s>[INST] Bye [/INST]"
        );
        let p = ChatTemplate::from_jinja(PHI3, "<s>", "<|endoftext|>").expect("compile");
        assert_eq!(p.end_of_turn(), "<|end|>");
    }

    #[test]
    fn qwen25_matches_builtin_chatml_when_a_system_message_is_given() {
        let t = ChatTemplate::from_jinja(QWEN25, "", "<|im_end|>").expect("compile");
        assert_eq!(t.end_of_turn(), CHATML_END);
        assert_eq!(
            t.render(&chat(), true).expect("render"),
            ChatTemplate::chatml()
                .render(&chat(), true)
                .expect("render")
        );
        // Without one, the template's own default system prompt appears.
        let text = t.render(&chat()[1..2], true).expect("render");
        assert!(
            text.starts_with("<|im_start|>system\nYou are Qwen"),
            "{text}"
        );
    }

    #[test]
    fn assistant_spans_cover_each_reply_and_its_end_marker_only() {
        let messages = [
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "Hi"),
            Message::new(Role::Assistant, "Hello!"),
            Message::new(Role::User, "Hi again"),
            Message::new(Role::Assistant, "Hello again!"),
        ];
        for (template, expect) in [
            (
                ChatTemplate::from_jinja(LLAMA3, "<|begin_of_text|>", "<|eot_id|>")
                    .expect("llama3"),
                ["Hello!<|eot_id|>", "Hello again!<|eot_id|>"],
            ),
            (
                ChatTemplate::from_jinja(GEMMA, "<bos>", "<eos>").expect("gemma"),
                ["Hello!<end_of_turn>", "Hello again!<end_of_turn>"],
            ),
            (
                ChatTemplate::from_jinja(MISTRAL, "<s>", "</s>").expect("mistral"),
                ["Hello!</s>", "Hello again!</s>"],
            ),
            (
                ChatTemplate::chatml(),
                ["Hello!<|im_end|>", "Hello again!<|im_end|>"],
            ),
        ] {
            let (text, spans) = template.assistant_spans(&messages, 0).expect("spans");
            let got: Vec<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
            assert_eq!(got, expect, "{template:?} in {text:?}");
            // Only the second reply when the first is prompt.
            let (text, spans) = template.assistant_spans(&messages, 3).expect("spans");
            let got: Vec<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
            assert_eq!(got, expect[1..], "{template:?}");
        }
    }

    #[test]
    fn a_reply_is_never_found_in_the_system_prompt_or_its_own_header() {
        let t = ChatTemplate::chatml();
        let messages = [
            Message::new(
                Role::System,
                "When the user says help, reply: Commands: a, b.",
            ),
            Message::new(Role::User, "help"),
            Message::new(Role::Assistant, "Commands: a, b."),
            Message::new(Role::User, "which?"),
            // Also in the header (`assistant`) and the end marker.
            Message::new(Role::Assistant, "a"),
        ];
        let (text, spans) = t.assistant_spans(&messages, 0).expect("spans");
        let got: Vec<&str> = spans.iter().map(|&(s, e)| &text[s..e]).collect();
        assert_eq!(got, ["Commands: a, b.<|im_end|>", "a<|im_end|>"]);
        let second_header = text.rfind("<|im_start|>assistant\n").expect("header");
        assert_eq!(spans[1].0, second_header + "<|im_start|>assistant\n".len());
    }

    #[test]
    fn the_space_before_a_reply_is_trained_with_it() {
        let t = ChatTemplate::chatml();
        let messages = [
            Message::new(Role::User, "The sky is"),
            Message::new(Role::Assistant, " blue."),
        ];
        let (text, spans) = t.assistant_spans(&messages, 1).expect("spans");
        assert_eq!(&text[spans[0].0..spans[0].1], " blue.<|im_end|>");
    }

    #[test]
    fn a_reply_that_is_also_in_the_question_is_found_after_the_question() {
        let t = ChatTemplate::chatml();
        let messages = [
            Message::new(Role::User, "Say yes"),
            Message::new(Role::Assistant, "yes"),
        ];
        let (text, spans) = t.assistant_spans(&messages, 0).expect("spans");
        assert_eq!(spans.len(), 1);
        assert!(spans[0].0 > text.find("Say yes").expect("question") + 4);
    }

    #[test]
    fn a_template_that_does_not_parse_is_refused() {
        let err =
            ChatTemplate::from_jinja("{% for m in messages %}", "", "").expect_err("unclosed");
        assert!(err.to_string().contains("does not parse"), "{err}");
    }

    #[test]
    fn dates_convert() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_428), (2025, 12, 6));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
