use std::path::PathBuf;

/// Everything that can go wrong with a knowledge base and its stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is in use by another running lore process (only one may write a knowledge base at a time)"
    )]
    Locked(PathBuf),
    #[error(
        "{dir} was built with the embedding model {built} but this run uses {requested} ({reason}); \
         use the same model, another --data-dir, or --rebuild to re-embed everything"
    )]
    ModelMismatch {
        dir: PathBuf,
        built: String,
        requested: String,
        reason: String,
    },
    #[error(
        "{0} is not a lore knowledge base (nothing was ingested there); run `lore ingest` first"
    )]
    NotAKnowledgeBase(PathBuf),
    #[error("{0} holds no documents yet; run `lore ingest DIR` first")]
    Empty(PathBuf),
    #[error(
        "{dir} was written by another version of lore (format {found}, this one reads {expected}); \
         run `lore ingest --rebuild` to rebuild it"
    )]
    OldFormat {
        dir: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{dir} keeps its vectors in {built}, not {requested}; {hint}")]
    BackendMismatch {
        dir: PathBuf,
        built: String,
        requested: String,
        hint: String,
    },
    #[error(
        "the Qdrant server {url}'s collection {collection} {whose}: lore leaves it alone. Point \
         this knowledge base at another collection (--qdrant-collection), or pass \
         --qdrant-take-over to make it this one's (its points are then replaced)"
    )]
    ForeignCollection {
        url: String,
        collection: String,
        whose: String,
    },
    #[error(
        "the knowledge base in collection {target} is being written by {holder} (its lease \
         runs {seconds_left} s more and is renewed while it writes); run this again when that \
         ingest has finished"
    )]
    LeaseHeld {
        target: String,
        holder: String,
        seconds_left: u64,
    },
    #[error("stopped writing: {0}; run the ingest again to converge")]
    LeaseLost(String),
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("bad filter {0}")]
    BadFilter(String),
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("store: {0}")]
    Store(String),
    #[error(transparent)]
    Ingest(#[from] lore_ingest::Error),
    /// The query's embedding failed ([`crate::KnowledgeBase::search_embedding`]).
    #[error(transparent)]
    Embed(#[from] lore_embed::Error),
}

impl Error {
    /// True when the user can act on it (another process, a model choice, a wrong folder).
    pub fn is_user_error(&self) -> bool {
        if let Error::Embed(e) = self {
            return e.is_user_error();
        }
        matches!(
            self,
            Error::Locked(_)
                | Error::LeaseHeld { .. }
                | Error::ModelMismatch { .. }
                | Error::NotAKnowledgeBase(_)
                | Error::Empty(_)
                | Error::OldFormat { .. }
                | Error::BackendMismatch { .. }
                | Error::ForeignCollection { .. }
                | Error::BadQuery(_)
                | Error::BadFilter(_)
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
