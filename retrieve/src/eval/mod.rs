//! Retrieval evaluation: standard metrics and the BEIR file format.

mod beir;
mod metrics;

pub use beir::{BeirError, CorpusDoc, Query, read_corpus, read_qrels, read_queries, read_trec_run};
pub use metrics::{Metrics, Qrels, Run, evaluate, query_metrics, trec_order, write_trec};
