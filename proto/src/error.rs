//! The error type of every `proto` parser.

/// Why some bytes could not be parsed. Cheap to clone: one error may go to many peers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input ended before the structure did; more bytes may complete it.
    #[error("need {needed} more bytes")]
    Incomplete {
        /// How many more bytes are needed at least.
        needed: usize,
    },
    /// The input is malformed.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The structure being parsed.
        what: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The input is well-formed but uses something gopbus does not handle.
    #[error("unsupported {what}: {value}")]
    Unsupported {
        /// The kind of thing (codec, version, ...).
        what: &'static str,
        /// Its value as found.
        value: u32,
    },
}

impl Error {
    pub(crate) const fn invalid(what: &'static str, why: &'static str) -> Self {
        Self::Invalid { what, why }
    }
}
