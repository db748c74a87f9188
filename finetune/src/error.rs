/// What can go wrong loading or running a language model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("bad request: {0}")]
    Request(String),
    #[error("remote generator: {0}")]
    Remote(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Prefixes the message with where it happened (a file).
    pub fn context(self, at: &str) -> Self {
        match self {
            Self::Metadata(m) => Self::Metadata(format!("{at}: {m}")),
            Self::Unsupported(m) => Self::Unsupported(format!("{at}: {m}")),
            other => other,
        }
    }
}
