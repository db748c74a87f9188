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

/// A worked example shown before the question, with the passages it answers from (if any;
/// they are numbered as the real ones are).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FewShot {
    pub question: String,
    pub answer: String,
    #[serde(default)]
    pub passages: Vec<String>,
}

impl FewShot {
    /// The demonstration used when the user gives none: small models copy the form of an
    /// example far more reliably than they follow an instruction to cite.
    pub fn builtin() -> Self {
        Self {
            question: "When was the Eiffel Tower completed?".into(),
            answer: "The Eiffel Tower was completed in 1889 [2].".into(),
            passages: vec![
                "The Eiffel Tower is a wrought-iron lattice tower in Paris, named after the engineer Gustave Eiffel, whose company designed and built it.".into(),
                "Construction of the tower began in 1887, and it was completed in 1889 as the entrance arch of the World's Fair.".into(),
            ],
        }
    }
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
    /// `false`: the answer cites it by number. `true`: the answer cites nothing, and this is
    /// the passage whose distinctive words (numbers, names) the answer repeats.
    pub inferred: bool,
}

/// The messages, and the passages that made it into them.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub messages: Vec<PromptMessage>,
    pub sources: Vec<Citation>,
    /// Passages dropped to fit the window.
    pub dropped: usize,
    /// The kept passages' texts, by number − 1.
    texts: Vec<String>,
    question: String,
}

impl Prompt {
    /// The texts of the passages the prompt holds, in their numbered order.
    pub fn passages(&self) -> Vec<&str> {
        self.texts.iter().map(String::as_str).collect()
    }

    /// The question the prompt asks.
    pub fn question(&self) -> &str {
        &self.question
    }

    /// The sources `answer` used: those it cites by number, or else the one passage it
    /// visibly draws on ([`Citation::inferred`]), or none.
    pub fn citations(&self, answer: &str) -> Vec<Citation> {
        let explicit = cited(answer, &self.sources);
        if !explicit.is_empty() {
            return explicit;
        }
        attribute(answer, &self.question, &self.sources, &self.texts)
            .into_iter()
            .collect()
    }
}

/// Words of `text`, lowercased, without the most common English function words; each with
/// whether it is distinctive (a number, or capitalised: a name).
fn content_words(text: &str) -> std::collections::BTreeMap<String, bool> {
    const COMMON: &[&str] = &[
        "a", "an", "and", "are", "as", "at", "be", "by", "did", "do", "for", "from", "had", "has",
        "have", "he", "her", "his", "in", "is", "it", "its", "of", "on", "or", "she", "that",
        "the", "their", "they", "this", "to", "was", "were", "what", "when", "where", "which",
        "who", "with",
    ];
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let distinctive = w.chars().any(|c| c.is_ascii_digit())
                || w.chars().next().is_some_and(char::is_uppercase);
            (w.to_lowercase(), distinctive)
        })
        .filter(|(w, _)| !COMMON.contains(&w.as_str()))
        .collect()
}

/// The passage an uncited answer draws on: the one sharing the most of the answer's words
/// that are not in the question, where a number or a name counts double; at least two
/// points, so a single common word does not make a citation. Ties go to the better-ranked
/// passage.
fn attribute(
    answer: &str,
    question: &str,
    sources: &[Citation],
    texts: &[String],
) -> Option<Citation> {
    let asked = content_words(question);
    let said: Vec<(String, bool)> = content_words(answer)
        .into_iter()
        .filter(|(w, _)| !asked.contains_key(w))
        .collect();
    let (best, score) = texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let words = content_words(text);
            let score: usize = said
                .iter()
                .filter(|(w, _)| words.contains_key(w))
                .map(|&(_, distinctive)| if distinctive { 2 } else { 1 })
                .sum();
            (i, score)
        })
        .fold((0, 0), |best, cur| if cur.1 > best.1 { cur } else { best });
    (score >= 2).then(|| Citation {
        inferred: true,
        ..sources[best].clone()
    })
}

const DEFAULT_SYSTEM: &str = "You answer questions using only the numbered passages you are given. \
Cite the passages you use by their number in square brackets, like [1]. Answer in one or two \
sentences and stop. Never add facts the passages do not state. If the passages do not contain \
the answer, reply only: The knowledge base does not say.";
const NO_CONTEXT: &str = "No passages were found for this question. Say that the knowledge base \
has nothing on it, and answer only if you are sure.";

fn user_message(question: &str, passages: &[(String, &str)], searched: bool, cot: bool) -> String {
    let mut out = String::new();
    if passages.is_empty() && searched {
        out.push_str(NO_CONTEXT);
        out.push_str("\n\n");
    } else if !passages.is_empty() {
        out.push_str("Passages:\n");
        for (i, (source, text)) in passages.iter().enumerate() {
            out.push_str(&format!("[{}] ({source})\n{}\n\n", i + 1, text.trim()));
        }
    }
    out.push_str("Question: ");
    out.push_str(question.trim());
    if cot {
        out.push_str("\nThink step by step, then give the answer with its citations.");
    } else if !passages.is_empty() {
        out.push_str(
            "\nAnswer in one or two sentences, citing passage numbers like [1]. If the passages \
             do not answer it, reply: The knowledge base does not say.",
        );
    }
    out
}

fn hit_passages<'a>(hits: &[&'a Hit]) -> Vec<(String, &'a str)> {
    hits.iter()
        .map(|h| {
            (
                format!("{}:{}-{}", h.path, h.start_line, h.end_line),
                h.text.as_str(),
            )
        })
        .collect()
}

/// Where a small model that has answered starts to replay the prompt's layout (a new
/// question, a passage list, a numbered passage): generation stops there.
pub const STOP_SEQUENCES: &[&str] = &["\nQuestion:", "\nPassages:", "\n\n[", "<|im_start|>"];

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
    let builtin = [FewShot::builtin()];
    let shots = match (&options.few_shot[..], hits.is_empty()) {
        ([], false) => &builtin[..],
        (given, _) => given,
    };
    for shot in shots {
        let passages: Vec<(String, &str)> = shot
            .passages
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("example.md:{}-{}", i + 1, i + 1), p.as_str()))
            .collect();
        fixed.push(PromptMessage {
            role: PromptRole::User,
            content: user_message(&shot.question, &passages, false, false),
        });
        fixed.push(PromptMessage {
            role: PromptRole::Assistant,
            content: shot.answer.trim().to_string(),
        });
    }
    let fixed_tokens: usize = fixed.iter().map(|m| count_tokens(&m.content) + 8).sum();
    // Drop the lowest-ranked passages until everything fits.
    let mut keep: Vec<&Hit> = hits.iter().collect();
    let cot = options.chain_of_thought;
    let mut user = user_message(question, &hit_passages(&keep), true, cot);
    while !keep.is_empty() && fixed_tokens + count_tokens(&user) + 8 > budget {
        keep.pop();
        user = user_message(question, &hit_passages(&keep), true, cot);
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
            inferred: false,
        })
        .collect();
    let texts = keep.iter().map(|h| h.text.clone()).collect();
    let mut messages = fixed;
    messages.push(PromptMessage {
        role: PromptRole::User,
        content: user,
    });
    Prompt {
        messages,
        sources,
        dropped: hits.len() - keep.len(),
        texts,
        question: question.to_string(),
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
        // System, the built-in example (question and answer), the question.
        assert_eq!(full.messages.len(), 4);
        assert!(full.messages[1].content.contains("Eiffel"));
        assert!(
            full.messages[3]
                .content
                .contains("[1] (a.md:1-3)\nalpha beta gamma")
        );
        assert!(full.messages[0].content.contains("does not say"));
        let tight = build(
            "What is alpha?",
            &hits,
            &PromptOptions::default(),
            215,
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
                passages: vec!["Two and two make four.".into()],
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
        assert!(
            p.messages[1]
                .content
                .contains("[1] (example.md:1-1)\nTwo and two")
        );
    }

    #[test]
    fn without_passages_the_prompt_says_so() {
        let p = build("Why?", &[], &PromptOptions::default(), 10_000, &words);
        assert_eq!(p.messages.len(), 2, "no example without passages");
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
                inferred: false,
            })
            .collect();
        let got = cited("Paris [2]. Also [1, 3][2] and [7] and [x].", &sources);
        assert_eq!(got.iter().map(|c| c.n).collect::<Vec<_>>(), [2, 1, 3]);
    }

    #[test]
    fn an_uncited_answer_is_attributed_only_to_a_passage_it_draws_on() {
        let hits = vec![
            hit("a.md", "Lincoln was born in 1809 in Kentucky."),
            hit(
                "b.md",
                "Lincoln was assassinated in April 1865 by John Wilkes Booth.",
            ),
        ];
        let p = build(
            "When did Lincoln die?",
            &hits,
            &PromptOptions::default(),
            10_000,
            &words,
        );
        let got = p.citations("He died in 1865, shot by Booth.");
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].path.as_str(), got[0].inferred), ("b.md", true));
        // Explicit markers win; restating the question draws on nothing.
        assert!(!p.citations("See [1].")[0].inferred);
        assert!(p.citations("Lincoln died, I think.").is_empty());
        assert!(p.citations("He died a long time ago.").is_empty());
    }
}
