//! A remote OpenAI-compatible chat endpoint (llama.cpp's server, vLLM, Ollama, a hosted API)
//! as a generator: `POST {base}/chat/completions` with `stream: true`, read as Server-Sent
//! Events. Blocking on purpose: it runs on its own thread, like the local model.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::generation::generate::{FinishReason, Generation};
use crate::generation::sampling::SamplingConfig;
use crate::lm::chat::Message;
use crate::{Error, Result};

/// Where the endpoint is and who we are to it.
#[derive(Clone)]
pub struct RemoteConfig {
    /// `http(s)://host:port`, `…/v1`, or the full `…/chat/completions` URL.
    pub url: String,
    /// The `model` field of each request.
    pub model: String,
    pub api_key: Option<String>,
    /// The longest silence tolerated while waiting for the next token.
    pub read_timeout: Duration,
}

impl std::fmt::Debug for RemoteConfig {
    // The key stays out of logs and error reports.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "…"))
            .finish()
    }
}

/// A client for one endpoint.
#[derive(Debug, Clone)]
pub struct RemoteChat {
    pub config: RemoteConfig,
    endpoint: String,
    agent: ureq::Agent,
}

/// The full chat-completions URL for what a user typed.
fn endpoint(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Error::Request(format!(
            "--llm-url `{url}` must start with http:// or https://"
        )));
    }
    Ok(if url.ends_with("/chat/completions") {
        url.to_string()
    } else if url.ends_with("/v1") {
        format!("{url}/chat/completions")
    } else {
        format!("{url}/v1/chat/completions")
    })
}

impl RemoteChat {
    pub fn new(config: RemoteConfig) -> Result<Self> {
        if config.model.trim().is_empty() {
            return Err(Error::Request(
                "--llm-model must name the remote model".into(),
            ));
        }
        let endpoint = endpoint(&config.url)?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(config.read_timeout)
            .build();
        Ok(Self {
            config,
            endpoint,
            agent,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Streams a reply to `messages`; `on_text` gets each piece and returns `false` to stop.
    /// Only the OpenAI sampling fields are sent (temperature, top_p, seed, max_tokens, stop):
    /// hosted APIs reject unknown ones.
    pub fn chat(
        &self,
        messages: &[Message],
        max_tokens: usize,
        sampling: &SamplingConfig,
        stop: &[String],
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Generation> {
        if max_tokens == 0 {
            return Err(Error::Request("max tokens must be at least 1".into()));
        }
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role.name(), "content": m.content}))
            .collect();
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
        });
        if !stop.is_empty() {
            // OpenAI accepts at most four; the caller lists the ones that matter most first.
            body["stop"] = json!(stop.iter().take(4).collect::<Vec<_>>());
        }
        let mut request = self
            .agent
            .post(&self.endpoint)
            .set("Content-Type", "application/json")
            .set("Accept", "text/event-stream");
        if let Some(key) = &self.config.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let started = Instant::now();
        let response = request
            .send_string(&body.to_string())
            .map_err(|e| self.http_error(e))?;
        let mut reader = BufReader::new(response.into_reader());
        let mut text = String::new();
        let mut first_token: Option<f64> = None;
        let mut pieces = 0usize;
        let mut usage: Option<(usize, usize)> = None;
        let mut finish = FinishReason::Stop;
        let mut line = String::new();
        loop {
            line.clear();
            let read = reader.read_line(&mut line).map_err(|e| {
                Error::Remote(format!("{}: reading the stream: {e}", self.endpoint))
            })?;
            if read == 0 {
                break;
            }
            let Some(data) = line.trim_end().strip_prefix("data:") else {
                continue; // comments, event names, blank separators
            };
            let data = data.trim();
            if data == "[DONE]" {
                break;
            }
            let event: Value = serde_json::from_str(data).map_err(|e| {
                Error::Remote(format!(
                    "{}: a stream event is not JSON ({e}): {data}",
                    self.endpoint
                ))
            })?;
            if let Some(message) = event["error"]["message"].as_str() {
                return Err(Error::Remote(format!("{}: {message}", self.endpoint)));
            }
            if let (Some(p), Some(c)) = (
                event["usage"]["prompt_tokens"].as_u64(),
                event["usage"]["completion_tokens"].as_u64(),
            ) {
                usage = Some((p as usize, c as usize));
            }
            let choice = &event["choices"][0];
            if let Some(piece) = choice["delta"]["content"]
                .as_str()
                .filter(|p| !p.is_empty())
            {
                first_token.get_or_insert_with(|| started.elapsed().as_secs_f64());
                pieces += 1;
                text.push_str(piece);
                if !on_text(piece) {
                    // Dropping the response closes the connection, which stops the server.
                    finish = FinishReason::Cancelled;
                    break;
                }
            }
            if choice["finish_reason"].as_str() == Some("length") {
                finish = FinishReason::Length;
            }
        }
        let total = started.elapsed().as_secs_f64();
        let prefill_s = first_token.unwrap_or(total);
        // Servers that do not report usage: one streamed piece is one token on every server
        // tried; the prompt count is then unknown (0).
        let (prompt_tokens, completion_tokens) = usage.unwrap_or((0, pieces));
        Ok(Generation {
            logprobs: None,
            text,
            prompt_tokens,
            completion_tokens,
            finish_reason: finish,
            prefill_s,
            decode_s: total - prefill_s,
        })
    }

    fn http_error(&self, e: ureq::Error) -> Error {
        match e {
            ureq::Error::Status(code, response) => {
                let body = response.into_string().unwrap_or_default();
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v["error"]["message"]
                            .as_str()
                            .or(v["error"].as_str())
                            .or(v["detail"].as_str())
                            .map(str::to_string)
                    })
                    .unwrap_or(body);
                Error::Remote(format!("{}: HTTP {code}: {message}", self.endpoint))
            }
            ureq::Error::Transport(t) => Error::Remote(format!("{}: {t}", self.endpoint)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn endpoints_accept_the_usual_spellings() {
        let full = "http://127.0.0.1:8080/v1/chat/completions";
        assert_eq!(endpoint("http://127.0.0.1:8080").unwrap(), full);
        assert_eq!(endpoint("http://127.0.0.1:8080/v1/").unwrap(), full);
        assert_eq!(endpoint(full).unwrap(), full);
        assert!(endpoint("127.0.0.1:8080").is_err());
    }
}
