//! Load test of a running `lore serve`: N client threads, each sending requests in a loop over
//! one keep-alive connection for a fixed time, then latency percentiles and status counts.
//!
//! ```text
//! cargo run --release -p lore-tests --example load_test -- --url http://127.0.0.1:PORT \
//!     [--key KEY] [--target search|embeddings] [--clients 32] [--duration 60] [--timeout 120] [--json]
//! ```
//!
//! - `search`: `POST /v1/search` with a rotating set of questions about `examples/articles`,
//!   `k` 5, mode hybrid.
//! - `embeddings`: `POST /v1/embeddings` with one short text per request, rotating.
//!
//! Prints requests, requests/s, p50/p90/p99/max latency (ms) of the successful (200) requests,
//! counts by status (200, 429, other) and transport errors (connection refused or reset,
//! timeouts). `--json` prints one JSON object instead. Errors are counted, never fatal: the exit
//! status is 0 whenever the run completed, whatever the server answered.
//! `scripts/load-test` builds the server, ingests the articles and runs this against it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const QUERIES: &[&str] = &[
    "When did work on the ASCII standard begin?",
    "In which state was Abraham Lincoln born?",
    "How many ships did Achilles bring to Troy?",
    "Who directed the third Alien film in 1992?",
    "What is the albedo of fresh snow?",
    "Which prize did Alain Connes receive in 2001?",
    "When was the hottest temperature recorded in Alabama?",
    "Who is considered the first alchemist?",
    "What is the only native monkey species in Algeria?",
    "How many films did Allan Dwan direct?",
    "Where does the word altruism come from?",
    "What did Kropotkin write about mutual aid?",
    "What is the current name of the Oscar for art direction?",
    "When was the first Academy Awards ceremony held?",
    "Which film by Ventura Pons has no male actors?",
    "Who started the long-term experiments at Rothamsted?",
    "What are the main schools of anarchism?",
    "How many Grand Slam titles did Andre Agassi win?",
    "Which Greek god is associated with the sun and music?",
    "What did Aristotle write about logic?",
    "How is International Atomic Time defined?",
    "Who is John Galt in Atlas Shrugged?",
];

const TEXTS: &[&str] = &[
    "The letter A is the first letter of the Latin alphabet.",
    "Abraham Lincoln was the sixteenth president of the United States.",
    "Achilles was a hero of the Trojan War.",
    "The Academy Awards honour achievements in film.",
    "Agricultural science studies farming and crops.",
    "Alabama is a state in the southeastern United States.",
    "Albedo measures how much light a surface reflects.",
    "Alchemy sought to turn base metals into gold.",
    "Algeria is the largest country in Africa.",
    "Altruism is concern for the welfare of others.",
    "Anarchism rejects involuntary hierarchy.",
    "Andre Agassi is a former world number one tennis player.",
    "Animation makes still images appear to move.",
    "Anthropology is the study of humanity.",
    "Apollo is a god of the sun, music and prophecy.",
    "Aristotle was a student of Plato.",
    "ASCII encodes 128 characters in seven bits.",
    "Austin is the capital of Texas.",
    "Autism affects communication and behaviour.",
    "Ayn Rand wrote The Fountainhead and Atlas Shrugged.",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Search,
    Embeddings,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Search => "search",
            Target::Embeddings => "embeddings",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Target::Search => "/v1/search",
            Target::Embeddings => "/v1/embeddings",
        }
    }
    fn body(self, i: usize) -> String {
        match self {
            Target::Search => {
                json!({"query": QUERIES[i % QUERIES.len()], "k": 5, "mode": "hybrid"})
            }
            Target::Embeddings => json!({"input": TEXTS[i % TEXTS.len()], "model": "default"}),
        }
        .to_string()
    }
    /// Whether a 200 body has the shape this endpoint promises.
    fn valid(self, body: &str) -> bool {
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            return false;
        };
        match self {
            Target::Search => v["hits"].is_array(),
            Target::Embeddings => v["data"][0]["embedding"]
                .as_array()
                .is_some_and(|e| !e.is_empty()),
        }
    }
}

struct Args {
    url: String,
    key: Option<String>,
    target: Target,
    clients: usize,
    duration: Duration,
    timeout: Duration,
    json: bool,
}

const USAGE: &str = "usage: load_test --url http://HOST:PORT [--key KEY] [--target search|embeddings] \
[--clients 32] [--duration SECONDS] [--timeout SECONDS] [--json]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        key: std::env::var("LORE_API_KEY").ok().filter(|k| !k.is_empty()),
        target: Target::Search,
        clients: 32,
        duration: Duration::from_secs(60),
        timeout: Duration::from_secs(120),
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let seconds = |s: String| -> Result<Duration, String> {
            s.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| format!("not a positive number of seconds: {s}"))
        };
        match flag.as_str() {
            "--url" => args.url = value()?.trim_end_matches('/').to_string(),
            "--key" => args.key = Some(value()?),
            "--target" => {
                args.target = match value()?.as_str() {
                    "search" => Target::Search,
                    "embeddings" => Target::Embeddings,
                    other => {
                        return Err(format!("unknown target {other:?} (search or embeddings)"));
                    }
                }
            }
            "--clients" => {
                let v = value()?;
                args.clients = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("not a positive number of clients: {v}"))?;
            }
            "--duration" => args.duration = seconds(value()?)?,
            "--timeout" => args.timeout = seconds(value()?)?,
            "--json" => args.json = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if args.url.is_empty() {
        return Err(format!("--url is required\n{USAGE}"));
    }
    Ok(args)
}

/// What one request ended in.
enum Outcome {
    /// The status and whether a 200 body had the expected shape.
    Status(u16, bool),
    /// No response: the kind of transport error and its message.
    Transport(String, String),
}

struct Sample {
    latency: Duration,
    outcome: Outcome,
}

fn client(args: &Args, id: usize, stop: &AtomicBool, deadline: Instant) -> Vec<Sample> {
    // One agent per thread; one idle connection is all it needs, reused across requests.
    let agent = ureq::AgentBuilder::new()
        .max_idle_connections(1)
        .max_idle_connections_per_host(1)
        .timeout_connect(Duration::from_secs(10))
        .timeout(args.timeout)
        .build();
    let url = format!("{}{}", args.url, args.target.path());
    let auth = args.key.as_ref().map(|k| format!("Bearer {k}"));
    let mut samples = Vec::new();
    // Each client starts at another point of the rotation.
    let mut i = id * 7;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let body = args.target.body(i);
        i += 1;
        let mut request = agent.post(&url).set("Content-Type", "application/json");
        if let Some(auth) = &auth {
            request = request.set("Authorization", auth);
        }
        let started = Instant::now();
        // The body is read to the end either way, so the connection goes back to the pool.
        let outcome = match request.send_string(&body) {
            Ok(response) => {
                let status = response.status();
                match response.into_string() {
                    Ok(text) => Outcome::Status(status, status != 200 || args.target.valid(&text)),
                    Err(e) => Outcome::Transport("body".into(), e.to_string()),
                }
            }
            Err(ureq::Error::Status(status, response)) => {
                let _ = response.into_string();
                Outcome::Status(status, true)
            }
            Err(ureq::Error::Transport(t)) => {
                Outcome::Transport(format!("{:?}", t.kind()), t.to_string())
            }
        };
        let latency = started.elapsed();
        let failed_transport = matches!(outcome, Outcome::Transport(..));
        samples.push(Sample { latency, outcome });
        if failed_transport {
            // A refused connection fails at once: do not spin on a dead server.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    samples
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("load_test: {e}");
            std::process::exit(2);
        }
    };
    let args = Arc::new(args);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + args.duration;
    let handles: Vec<_> = (0..args.clients)
        .map(|id| {
            let args = Arc::clone(&args);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("client-{id}"))
                .spawn(move || client(&args, id, &stop, deadline))
        })
        .collect();
    let mut samples = Vec::new();
    let mut spawn_errors = 0usize;
    let mut panics = 0usize;
    for handle in handles {
        match handle {
            Ok(h) => match h.join() {
                Ok(s) => samples.extend(s),
                Err(_) => panics += 1,
            },
            Err(_) => spawn_errors += 1,
        }
    }
    let elapsed = started.elapsed();

    let mut ok_latencies = Vec::new();
    let mut rejected_latencies = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut transport: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_errors: Vec<String> = Vec::new();
    let mut invalid_bodies = 0usize;
    for s in &samples {
        match &s.outcome {
            Outcome::Status(code, valid) => {
                *statuses.entry(*code).or_default() += 1;
                match code {
                    200 => {
                        ok_latencies.push(s.latency);
                        if !valid {
                            invalid_bodies += 1;
                        }
                    }
                    429 => rejected_latencies.push(s.latency),
                    _ => {}
                }
            }
            Outcome::Transport(kind, message) => {
                *transport.entry(kind.clone()).or_default() += 1;
                if first_errors.len() < 5 && !first_errors.contains(message) {
                    first_errors.push(message.clone());
                }
            }
        }
    }
    ok_latencies.sort_unstable();
    rejected_latencies.sort_unstable();
    let total = samples.len();
    let n200 = statuses.get(&200).copied().unwrap_or(0);
    let n429 = statuses.get(&429).copied().unwrap_or(0);
    let other: BTreeMap<String, usize> = statuses
        .iter()
        .filter(|(c, _)| **c != 200 && **c != 429)
        .map(|(c, n)| (c.to_string(), *n))
        .collect();
    let n_other: usize = other.values().sum();
    let n_transport: usize = transport.values().sum();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let (p50, p90, p99, max) = (
        percentile(&ok_latencies, 50.0),
        percentile(&ok_latencies, 90.0),
        percentile(&ok_latencies, 99.0),
        ok_latencies.last().copied().unwrap_or_default(),
    );
    let mean = if ok_latencies.is_empty() {
        Duration::ZERO
    } else {
        ok_latencies.iter().sum::<Duration>() / ok_latencies.len() as u32
    };

    if args.json {
        let report = json!({
            "target": args.target.name(),
            "url": args.url,
            "clients": args.clients,
            "duration_s": args.duration.as_secs_f64(),
            "elapsed_s": (secs * 1000.0).round() / 1000.0,
            "requests": total,
            "requests_per_s": (total as f64 / secs * 10.0).round() / 10.0,
            "ok_per_s": (n200 as f64 / secs * 10.0).round() / 10.0,
            "latency_ms": {"p50": ms(p50), "p90": ms(p90), "p99": ms(p99), "max": ms(max), "mean": ms(mean)},
            "rejected_latency_ms": {
                "p50": ms(percentile(&rejected_latencies, 50.0)),
                "max": ms(rejected_latencies.last().copied().unwrap_or_default()),
            },
            "status": {"200": n200, "429": n429, "other": n_other},
            "other_statuses": other,
            "invalid_bodies": invalid_bodies,
            "transport_errors": n_transport,
            "transport_error_kinds": transport,
            "first_transport_errors": first_errors,
            "client_failures": spawn_errors + panics,
        });
        println!("{report}");
    } else {
        println!(
            "target {} at {}: {} clients for {:.1} s",
            args.target.name(),
            args.url,
            args.clients,
            secs
        );
        println!(
            "requests: {total} ({:.1}/s; {:.1}/s answered 200)",
            total as f64 / secs,
            n200 as f64 / secs
        );
        println!(
            "latency of 200s (ms): p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}  mean {:.1}",
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max),
            ms(mean)
        );
        let other_detail = if other.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                other
                    .iter()
                    .map(|(c, n)| format!("{c}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        println!("status: 200 {n200}, 429 {n429}, other {n_other}{other_detail}");
        if n429 > 0 {
            println!(
                "latency of 429s (ms): p50 {:.1}  max {:.1}",
                ms(percentile(&rejected_latencies, 50.0)),
                ms(rejected_latencies.last().copied().unwrap_or_default())
            );
        }
        if invalid_bodies > 0 {
            println!("200s with an unexpected body: {invalid_bodies}");
        }
        let kinds = transport
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "transport errors: {n_transport}{}",
            if kinds.is_empty() {
                String::new()
            } else {
                format!(" ({kinds})")
            }
        );
        for e in &first_errors {
            println!("  e.g. {e}");
        }
        if spawn_errors + panics > 0 {
            println!("client threads that failed: {}", spawn_errors + panics);
        }
    }
}
