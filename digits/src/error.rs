//! [`DigitsError`]: everything that can fail in this package, in one type.

use std::fmt;
use std::path::PathBuf;

use ddim::DdimError;

use crate::unet::UnetError;

/// What went wrong in the demonstration: the scheduler, the network, or a file.
#[derive(Debug)]
#[non_exhaustive]
pub enum DigitsError {
    /// The `ddim` scheduler refused a call (a bad config, timestep, shape or eta).
    Scheduler(DdimError),
    /// The ONNX network could not be loaded or run.
    Network(UnetError),
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// `digits.json` is not what `scripts/train_digits.py` writes.
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A figure could not be encoded as PNG.
    Figure {
        /// The file being written.
        path: PathBuf,
        /// The encoder's explanation.
        message: String,
    },
    /// An argument outside what the call accepts (an empty sample set, mismatched sizes).
    InvalidArgument(String),
}

impl fmt::Display for DigitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigitsError::Scheduler(e) => write!(f, "scheduler: {e}"),
            DigitsError::Network(e) => write!(f, "network: {e}"),
            DigitsError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            DigitsError::Data { path, message } => write!(f, "{}: {message}", path.display()),
            DigitsError::Figure { path, message } => {
                write!(f, "cannot write the figure {}: {message}", path.display())
            }
            DigitsError::InvalidArgument(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DigitsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DigitsError::Scheduler(e) => Some(e),
            DigitsError::Network(e) => Some(e),
            DigitsError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl From<DdimError> for DigitsError {
    fn from(e: DdimError) -> Self {
        DigitsError::Scheduler(e)
    }
}

impl From<UnetError> for DigitsError {
    fn from(e: UnetError) -> Self {
        DigitsError::Network(e)
    }
}
