use std::path::PathBuf;

/// Everything that can go wrong while finding, loading or running an embedding model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "embedding model {model:?} not found (looked in {searched}); run scripts/fetch-models, \
         or pass --model with a model folder or a Hugging Face hub id"
    )]
    ModelNotFound { model: String, searched: String },
    #[error("cannot download {model:?} from the Hugging Face hub: {reason}")]
    Hub { model: String, reason: String },
    #[error("model folder {dir}: {reason}")]
    InvalidModel { dir: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model runtime: {0}")]
    Runtime(String),
    #[error("the embedding worker has stopped")]
    WorkerGone,
}

impl Error {
    /// True when the user can fix it (a wrong model name or folder), false for our failures.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::ModelNotFound { .. } | Error::InvalidModel { .. } | Error::Hub { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
