//! The one error type of xtask: a human-readable message that carries the context it failed in.
//!
//! xtask is a developer tool with no callers to branch on error kinds, so a message chain is
//! enough; it must never hide the underlying cause (the command, the path, the stderr).

use std::fmt;

/// A failure, already phrased for the person running `cargo xtask`.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    pub fn msg(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was being done to any displayable error, outermost first: `"reading x: not found"`.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }

    fn with_context<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error(format!("{}: {e}", what())))
    }
}

/// Returns early with an [`Error`] built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::msg(format!($($arg)*)))
    };
}
pub(crate) use bail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_puts_what_was_being_done_before_the_cause() {
        let failed: std::result::Result<(), &str> = Err("permission denied");
        let err = failed.context("writing /x").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("writing /x: permission denied"));
    }
}
