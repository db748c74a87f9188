use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid glob {glob:?}: {reason}")]
    Glob { glob: String, reason: String },
    #[error("{0} does not exist")]
    MissingRoot(PathBuf),
    #[error("{path}: binary file")]
    Binary { path: String },
    #[error(transparent)]
    Extract(#[from] crate::extract::ExtractError),
    #[error("invalid chunking settings: {0}")]
    ChunkConfig(String),
    #[error("cannot split {path}: {reason}")]
    Split { path: String, reason: String },
    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
}

impl Error {
    /// True when the cause is the user's input (a bad path, glob, setting or file), not a bug
    /// or an environment failure.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Error::Glob { .. }
                | Error::MissingRoot(_)
                | Error::Binary { .. }
                | Error::Extract(_)
                | Error::ChunkConfig(_)
        )
    }

    /// Why a file was skipped, without its path (reports list the path beside it).
    pub fn file_reason(&self) -> String {
        use crate::extract::ExtractError;
        match self {
            Error::Io { source, .. } => source.to_string(),
            Error::Binary { .. } => "binary file".into(),
            Error::Extract(ExtractError::Pdf { reason, .. }) => {
                format!("cannot extract text from PDF: {reason}")
            }
            Error::Extract(ExtractError::Empty { .. }) => "no text".into(),
            Error::Extract(ExtractError::NoIndex { .. }) => {
                "the page asks not to be indexed".into()
            }
            Error::Split { reason, .. } => format!("cannot split: {reason}"),
            other => other.to_string(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
