use std::path::PathBuf;

/// What can go wrong loading, running or training a language model.
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
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error at `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the caller can fix it (a bad request, a model or file lore cannot use, a path
    /// that does not exist): 4xx over HTTP. Disk failures, remote endpoints and the compute
    /// itself are not the caller's doing.
    pub fn is_user_error(&self) -> bool {
        match self {
            Self::Metadata(_) | Self::Unsupported(_) | Self::Request(_) => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::AlreadyExists
                    | std::io::ErrorKind::InvalidInput
                    | std::io::ErrorKind::InvalidData
                    | std::io::ErrorKind::IsADirectory
                    | std::io::ErrorKind::NotADirectory
                    | std::io::ErrorKind::DirectoryNotEmpty
            ),
            // A tokenizer failing on text mid-generation is lore's; one a model cannot build
            // is reported at load time, before any request.
            Self::Remote(_) | Self::Tokenizer(_) | Self::Candle(_) => false,
        }
    }

    /// Prefixes the message with where it happened (a file).
    pub fn context(self, at: &str) -> Self {
        match self {
            Self::Metadata(m) => Self::Metadata(format!("{at}: {m}")),
            Self::Unsupported(m) => Self::Unsupported(format!("{at}: {m}")),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_the_callers_and_a_full_disk_is_not() {
        let missing = Error::io("/nowhere", std::io::ErrorKind::NotFound.into());
        assert!(missing.is_user_error());
        assert_eq!(
            missing.to_string(),
            format!(
                "/nowhere: {}",
                std::io::Error::from(std::io::ErrorKind::NotFound)
            )
        );
        let full = Error::io("/data/adapter", std::io::ErrorKind::StorageFull.into());
        assert!(!full.is_user_error());
        assert!(Error::Request("x".into()).is_user_error());
        assert!(!Error::Remote("x".into()).is_user_error());
    }
}
