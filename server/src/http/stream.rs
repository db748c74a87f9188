//! From the language model's thread to an HTTP response.
//!
//! The worker streams [`Event`]s on a std channel; a blocking task turns each into whatever
//! the response sends (SSE events) on a tokio channel. When the client goes away the
//! response drops the tokio receiver, the next send fails, the task drops the std receiver,
//! and the worker stops generating at its next token: nothing runs for a reader who left.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use lore_finetune::Event;
use lore_finetune::Generation;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::state::AppState;

/// How one endpoint turns generated text into what it sends.
pub trait Relay: Send + 'static {
    type Out: Send + 'static;
    /// A piece of text as it arrives.
    fn text(&mut self, piece: &str) -> Option<Self::Out>;
    /// The end: the final messages (usage, citations, `[DONE]`), or an error's.
    fn done(self, result: Result<Generation, ApiError>) -> Vec<Self::Out>;
}

/// Relays `events` through `relay` until the generation ends or the client leaves. The
/// permit is held until then, so the model's limit counts streams still running.
pub fn relay<R: Relay>(
    state: &AppState,
    events: Receiver<Event>,
    permit: OwnedSemaphorePermit,
    mut relay: R,
) -> ReceiverStream<R::Out> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        for event in events {
            match event {
                Event::Text(piece) => {
                    if let Some(out) = relay.text(&piece)
                        && tx.blocking_send(out).is_err()
                    {
                        tracing::info!("client went away: generation stopped");
                        return;
                    }
                }
                Event::Done(result) => {
                    if let Ok(g) = &result {
                        count_tokens(&state, g);
                    }
                    for out in relay.done(result.map_err(ApiError::from)) {
                        if tx.blocking_send(out).is_err() {
                            return;
                        }
                    }
                    return;
                }
            }
        }
        // The worker ended without a last event: tell the client rather than just closing.
        for out in relay.done(Err(ApiError::unavailable(
            "the language model thread stopped without an answer",
        ))) {
            if tx.blocking_send(out).is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// What [`collect`] hears from the relay: a tick per piece (so that the relay notices a
/// caller who stopped waiting), then the end.
enum Collected {
    Piece,
    Done(Result<Generation, ApiError>),
}

struct Collect;

impl Relay for Collect {
    type Out = Collected;
    fn text(&mut self, _piece: &str) -> Option<Collected> {
        Some(Collected::Piece)
    }
    fn done(self, result: Result<Generation, ApiError>) -> Vec<Collected> {
        vec![Collected::Done(result)]
    }
}

/// Waits for the whole answer (non-streamed responses). It runs through [`relay`], so
/// when this future is dropped (the client hung up, or the request timed out) the
/// generation stops at its next token instead of running to `max_tokens` for nobody.
pub async fn collect(
    state: &AppState,
    events: Receiver<Event>,
    permit: OwnedSemaphorePermit,
) -> Result<Generation, ApiError> {
    let mut pieces = relay(state, events, permit, Collect).into_inner();
    while let Some(out) = pieces.recv().await {
        if let Collected::Done(result) = out {
            return result;
        }
    }
    Err(ApiError::unavailable(
        "the language model thread stopped without an answer",
    ))
}

fn count_tokens(state: &AppState, g: &Generation) {
    state
        .metrics
        .tokens_generated
        .fetch_add(g.completion_tokens as u64, Ordering::Relaxed);
}
