//! One error type for the whole core, with structured fields so the bindings can map each
//! variant to the right Python exception.

use std::io;

/// Everything that can go wrong in nearq-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A vector or query has the wrong number of components.
    #[error("dimension mismatch: the index has dimension {expected}, the input has {got}")]
    DimensionMismatch { expected: usize, got: usize },
    /// An input value is NaN or infinite.
    #[error("{what} contains a non-finite value (NaN or inf) at row {row}, column {col}")]
    NonFinite {
        what: &'static str,
        row: usize,
        col: usize,
    },
    /// An input has no rows or no columns.
    #[error("{0} is empty")]
    Empty(&'static str),
    /// A parameter is out of range or unknown.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// Any other malformed input (shape, length).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// An index file is corrupt, truncated, foreign or from a newer format version.
    #[error("invalid index file: {0}")]
    Format(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn param(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParameter {
            name,
            reason: reason.into(),
        }
    }
}
