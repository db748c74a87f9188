//! The request log, in a process of its own: a test that installs a log subscriber must not
//! share tracing's per-callsite caches with tests running beside it.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;

use axum::http::StatusCode;
use common::{fixture, get};

/// Finding 9 (logs): a key put in the query string must not reach the request log.
#[test]
fn query_strings_stay_out_of_the_log() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let f = fixture(|_, _| {}).await;
        let (status, _) = f.call(get("/v1/documents?key=SECRET-4711")).await;
        assert_eq!(status, StatusCode::OK);
    });
    let log = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    assert!(log.contains("/v1/documents"), "{log}");
    assert!(!log.contains("SECRET-4711"), "{log}");
}
