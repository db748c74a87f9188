//! The in-context-learning prompt for grounded answers: a system message, optional few-shot
//! examples, the retrieved passages numbered `[1]…[n]` with their sources, the instruction to
//! cite by number and to say so when the passages lack the answer, optional chain of thought;
//! fitted to the model's window by dropping the lowest-ranked passages first.
//!
//! It produces role-tagged messages; the language model's chat template renders them.

use serde::{Deserialize, Serialize};

use crate::search::Hit;

/// Who says a message (the chat template's roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptRole {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PromptMessage {
    pub role: PromptRole,
    pub content: String,
}

/// A worked example shown before the question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FewShot {
    pub question: String,
    pub answer: String,
}

/// How to build the prompt.
#[derive(Debug, Clone, Default)]
pub struct PromptOptions {
    /// Replaces the default system message.
    pub system: Option<String>,
    pub few_shot: Vec<FewShot>,
    /// Ask the model to reason step by step before answering.
    pub chain_of_thought: bool,
}

/// A passage as cited: its number in the prompt and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Citation {
    pub n: usize,
    pub path: String,
    pub start_line: usize,
    pub end_line: usize,
    pub chunk_id: String,
}

/// The messages, and the passages that made it into them.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub messages: Vec<PromptMessage>,
    pub sources: Vec<Citation>,
    /// Passages dropped to fit the window.
    pub dropped: usize,
}

const DEFAULT_SYSTEM: &str = "You answer questions using only the numbered passages you are given. \
Cite the passages you use by their number in square brackets, like [1]. If the passages do not \
contain the answer, say that you do not know. Be concise.";
const NO_CONTEXT: &str = "No passages were found for this question. Say that the knowledge base \
has nothing on it, and answer only if you are sure.";

fn user_message(question: &str, hits: &[&Hit], cot: bool) -> String {
    let mut out = String::new();
    if hits.is_empty() {
        out.push_str(NO_CONTEXT);
        out.push_str("\n\n");
    } else {
        out.push_str("Passages:\n");
        for (i, h) in hits.iter().enumerate() {
            out.push_str(&format!(
                "[{}] ({}:{}-{})\n{}\n\n",
                i + 1,
                h.path,
                h.start_line,
                h.end_line,
                h.text.trim()
            ));
        }
    }
    out.push_str("Question: ");
    out.push_str(question.trim());
    if cot {
        out.push_str("\nThink step by step, then give the answer with its citations.");
    }
    out
}

/// Builds the prompt for `question` over `hits` (best first), keeping as many passages as fit
/// in `budget` tokens as counted by `count_tokens` (the rendered template adds a few tokens per
/// message, which `budget` should leave room for).
pub fn build(
    question: &str,
    hits: &[Hit],
    options: &PromptOptions,
    budget: usize,
    count_tokens: &dyn Fn(&str) -> usize,
) -> Prompt {
    let system = options
        .system
        .clone()
        .unwrap_or_else(|| DEFAULT_SYSTEM.to_string());
    let mut fixed = vec![PromptMessage {
        role: PromptRole::System,
        content: system,
    }];
    for shot in &options.few_shot {
        fixed.push(PromptMessage {
            role: PromptRole::User,
            content: format!("Question: {}", shot.question.trim()),
        });
        fixed.push(PromptMessage {
            role: PromptRole::Assistant,
            content: shot.answer.trim().to_string(),
        });
    }
    let fixed_tokens: usize = fixed.iter().map(|m| count_tokens(&m.content) + 8).sum();
    // Drop the lowest-ranked passages until everything fits.
    let mut keep: Vec<&Hit> = hits.iter().collect();
    let mut user = user_message(question, &keep, options.chain_of_thought);
    while !keep.is_empty() && fixed_tokens + count_tokens(&user) + 8 > budget {
        keep.pop();
        user = user_message(question, &keep, options.chain_of_thought);
    }
    let sources = keep
        .iter()
        .enumerate()
        .map(|(i, h)| Citation {
            n: i + 1,
            path: h.path.clone(),
            start_line: h.start_line,
            end_line: h.end_line,
            chunk_id: h.chunk_id.clone(),
        })
        .collect();
    let mut messages = fixed;
    messages.push(PromptMessage {
        role: PromptRole::User,
        content: user,
    });
    Prompt {
        messages,
        sources,
        dropped: hits.len() - keep.len(),
    }
}

/// The sources an answer cites (`[n]` markers, also `[1, 3]` and `[1][2]`), in order of first
/// citation; numbers that name no source are ignored.
pub fn cited(answer: &str, sources: &[Citation]) -> Vec<Citation> {
    let mut out: Vec<Citation> = Vec::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        for part in after[..close].split(',') {
            if let Ok(n) = part.trim().parse::<usize>()
                && let Some(s) = sources.iter().find(|s| s.n == n)
                && !out.iter().any(|c| c.n == n)
            {
                out.push(s.clone());
            }
        }
        rest = &after[close + 1..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(path: &str, text: &str) -> Hit {
        Hit {
            chunk_id: format!("id-{path}"),
            path: path.into(),
            start_line: 1,
            end_line: 3,
            heading: None,
            page: None,
            score: 1.0,
            text: text.into(),
            dense_rank: None,
            lexical_rank: None,
        }
    }

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn passages_are_numbered_with_sources_and_the_lowest_ranked_drop_first() {
        let hits = vec![
            hit("a.md", "alpha beta gamma"),
            hit("b.md", &"word ".repeat(50)),
            hit("c.md", "delta"),
        ];
        let full = build(
            "What is alpha?",
            &hits,
            &PromptOptions::default(),
            10_000,
            &words,
        );
        assert_eq!(full.sources.len(), 3);
        assert!(
            full.messages[1]
                .content
                .contains("[1] (a.md:1-3)\nalpha beta gamma")
        );
        assert!(full.messages[0].content.contains("do not know"));
        let tight = build(
            "What is alpha?",
            &hits,
            &PromptOptions::default(),
            110,
            &words,
        );
        assert_eq!(
            tight
                .sources
                .iter()
                .map(|s| s.path.as_str())
                .collect::<Vec<_>>(),
            ["a.md"]
        );
        assert_eq!(tight.dropped, 2);
    }

    #[test]
    fn few_shot_and_chain_of_thought_are_included() {
        let options = PromptOptions {
            system: Some("Be terse.".into()),
            few_shot: vec![FewShot {
                question: "2+2?".into(),
                answer: "4 [1]".into(),
            }],
            chain_of_thought: true,
        };
        let p = build("Why?", &[hit("a.md", "x")], &options, 10_000, &words);
        let roles: Vec<PromptRole> = p.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                PromptRole::System,
                PromptRole::User,
                PromptRole::Assistant,
                PromptRole::User
            ]
        );
        assert!(p.messages[3].content.contains("step by step"));
    }

    #[test]
    fn without_passages_the_prompt_says_so() {
        let p = build("Why?", &[], &PromptOptions::default(), 10_000, &words);
        assert!(p.messages[1].content.contains("No passages were found"));
    }

    #[test]
    fn citations_are_parsed_in_every_common_form() {
        let sources: Vec<Citation> = (1..=3)
            .map(|n| Citation {
                n,
                path: format!("{n}.md"),
                start_line: 1,
                end_line: 1,
                chunk_id: n.to_string(),
            })
            .collect();
        let got = cited("Paris [2]. Also [1, 3][2] and [7] and [x].", &sources);
        assert_eq!(got.iter().map(|c| c.n).collect::<Vec<_>>(), [2, 1, 3]);
    }
}
