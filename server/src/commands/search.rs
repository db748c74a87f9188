//! `lore search`: one query, hits printed for a person or as JSON.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Instant;

use lore_embed::{BertEmbedder, Embedder};
use lore_retrieve::{FilterExpr, KnowledgeBase, SearchRequest, Status};
use serde::Serialize;

use crate::cli::{Cli, SearchArgs};
use crate::models::{load_for_kb, store_config};

/// Bytes of chunk text shown per hit in human output.
const SNIPPET_BYTES: usize = 240;

#[derive(Serialize)]
struct Output<'a> {
    hits: &'a [lore_retrieve::Hit],
    mode: lore_retrieve::Mode,
    fusion: Option<lore_retrieve::Fusion>,
    warnings: &'a [String],
    timings: Timings,
}

#[derive(Serialize)]
struct Timings {
    embed_ms: f64,
    #[serde(flatten)]
    search: lore_retrieve::search::SearchTimings,
}

/// Tokens of `query` beyond what the model reads, as a warning.
pub(crate) fn truncation_warning(embedder: &BertEmbedder, query: &str) -> Option<String> {
    let mut tokenizer = embedder.tokenizer().clone();
    tokenizer.with_truncation(None).ok()?;
    let tokens = tokenizer.encode(query, true).ok()?.get_ids().len();
    let window = embedder.info().max_seq_len;
    (tokens > window).then(|| {
        format!("the query is {tokens} tokens; the embedding model reads only the first {window} (BM25 uses all of it)")
    })
}

pub fn run(cli: &Cli, args: &SearchArgs) -> anyhow::Result<ExitCode> {
    // Everything about the request is checked before the knowledge base is touched.
    let filters = args
        .filters
        .iter()
        .map(|f| FilterExpr::parse(f))
        .collect::<Result<Vec<_>, _>>()?;
    if args.query.trim().is_empty() {
        anyhow::bail!("the query is empty: say what to look for");
    }
    let store = store_config(&cli.store)?;
    let mut request = SearchRequest::new(args.query.clone(), args.mode, usize::from(args.k));
    request.filters = filters;
    request.fusion = args.rank.fusion();
    request.candidates = args.rank.candidates;
    request.collapse = !args.no_collapse;
    request.mmr = args.mmr;
    request.validate()?;
    // kb.json names the model; reading it takes no lock and writes nothing.
    let status = Status::read_at(&cli.data_dir, &store)?;
    if status.files == 0 {
        return Err(lore_retrieve::Error::Empty(status.data_dir.clone().into()).into());
    }

    let mut warnings = Vec::new();
    let embedder = if args.mode.needs_vector() {
        let embedder = load_for_kb(
            &status.model,
            args.model.as_deref(),
            cli.models_dir.as_deref(),
        )?;
        warnings.extend(truncation_warning(&embedder, &args.query));
        Some(embedder)
    } else {
        None
    };
    let kb = KnowledgeBase::open_existing(&cli.data_dir, &store)?;
    // The query is embedded inside the search, while its BM25 side runs.
    let embed_ms = std::sync::Mutex::new(0.0);
    let results = kb.search_embedding(&request, || {
        let t = Instant::now();
        let vector = match &embedder {
            Some(e) => e.embed(std::slice::from_ref(&args.query))?.pop(),
            None => None,
        };
        *embed_ms.lock().unwrap_or_else(|e| e.into_inner()) = t.elapsed().as_secs_f64() * 1e3;
        vector.ok_or_else(|| lore_embed::Error::Runtime("no vector for the query".into()))
    })?;
    let embed_ms = embed_ms.into_inner().unwrap_or_else(|e| e.into_inner());
    warnings.extend(results.warnings.iter().cloned());

    if args.json {
        super::print_json(&Output {
            hits: &results.hits,
            mode: args.mode,
            fusion: (args.mode == lore_retrieve::Mode::Hybrid).then_some(request.fusion),
            warnings: &warnings,
            timings: Timings {
                embed_ms,
                search: results.timings,
            },
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if results.hits.is_empty() {
        println!("no hits (searched {} files)", status.files);
        return Ok(ExitCode::SUCCESS);
    }
    let (open, close) = if std::io::stdout().is_terminal() {
        ("\x1b[1;33m", "\x1b[0m")
    } else {
        ("**", "**")
    };
    for (i, hit) in results.hits.iter().enumerate() {
        let lines = if hit.start_line == hit.end_line {
            format!("{}", hit.start_line)
        } else {
            format!("{}-{}", hit.start_line, hit.end_line)
        };
        let page = hit.page.map(|p| format!(" (page {p})")).unwrap_or_default();
        let heading = hit
            .heading
            .as_deref()
            .map(|h| format!("  § {h}"))
            .unwrap_or_default();
        println!(
            "{:>2}. {}:{lines}{page}{heading}  [score {:.4}]",
            i + 1,
            hit.path,
            hit.score
        );
        let snippet = kb.highlight(&args.query, &hit.text, SNIPPET_BYTES);
        println!("    {}", snippet.marked(open, close));
    }
    Ok(ExitCode::SUCCESS)
}
