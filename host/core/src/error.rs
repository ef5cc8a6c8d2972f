//! Errors classified by what the caller should do about them.
//!
//! Every failure that can end a pipeline has a [`Class`]: retry it later ([`Class::Transient`]),
//! let the `on_error` policy decide about the bad event or table ([`Class::Definite`]), let the
//! sink's `on_error` decide about data a destination refused ([`Class::Rejected`]), or stop
//! and have someone change something ([`Class::Fatal`], whose message says what). The class
//! travels with the error — [`Error`] carries it, and the typed errors of the connection, the
//! stream, the sinks and the delivery loop know theirs ([`Classify`]) — so a supervisor can
//! restart a pipeline that failed transiently and leave alone one that needs a person, and
//! `walflow` exits with a code per class ([`Class::exit_code`], the README's "Exit codes").
//!
//! Causes are often the useful part ("connection refused" under "cannot reach broker"), and
//! `Display` shows only the outermost error; [`chain`] spells out all of them on one line.

use crate::replication::{ContinuityError, StreamError};
use crate::sink::SinkError;

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Trying again later may succeed (a destination or the database down, a timeout): retry
    /// with backoff, confirming nothing meanwhile.
    Transient,
    /// This event or table is bad (a plugin failed on it, it cannot be encoded): the
    /// `on_error` policy decides between stopping, skipping and dead-lettering.
    Definite,
    /// A destination refused the data (an HTTP 400, say): the sink's `on_error` decides
    /// between stopping and dead-lettering.
    Rejected,
    /// Nothing succeeds until someone changes something (the configuration, a privilege, the
    /// database's setup): stop; the message says what to change.
    Fatal,
}

impl Class {
    /// The class's name, as status pages and logs show it.
    pub fn name(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::Definite => "definite",
            Class::Rejected => "rejected",
            Class::Fatal => "fatal",
        }
    }

    /// The exit code of `walflow` when a run ends with an error of this class: 1 fatal (fix
    /// what the message says), 3 transient (starting again later may succeed), 4 definite (an
    /// event or table the plugins or the encoder failed on), 5 rejected (a destination refused
    /// data). 2 is left to command-line usage errors.
    pub fn exit_code(self) -> u8 {
        match self {
            Class::Fatal => 1,
            Class::Transient => 3,
            Class::Definite => 4,
            Class::Rejected => 5,
        }
    }
}

/// Knows its [`Class`].
pub trait Classify {
    /// What the caller should do about this error.
    fn class(&self) -> Class;
}

/// An error with its class, for failures that have no typed error of their own (and for
/// typed ones on their way out of the crate that knows them, e.g. a delivery failure).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    class: Class,
    message: String,
}

impl Error {
    /// An error of `class` saying `message`.
    pub fn new(class: Class, message: impl Into<String>) -> Error {
        Error {
            class,
            message: message.into(),
        }
    }

    /// A failure that retrying later may fix.
    pub fn transient(message: impl Into<String>) -> Error {
        Error::new(Class::Transient, message)
    }

    /// A failure that needs a person; `message` says what to change.
    pub fn fatal(message: impl Into<String>) -> Error {
        Error::new(Class::Fatal, message)
    }
}

impl Classify for Error {
    fn class(&self) -> Class {
        self.class
    }
}

impl Classify for SinkError {
    fn class(&self) -> Class {
        match self {
            SinkError::Retryable(_) => Class::Transient,
            SinkError::Fatal(_) => Class::Fatal,
            SinkError::Rejected(_) => Class::Rejected,
        }
    }
}

impl Classify for walflow_pg::ConnectError {
    fn class(&self) -> Class {
        if self.is_retryable() {
            Class::Transient
        } else {
            Class::Fatal
        }
    }
}

impl Classify for StreamError {
    fn class(&self) -> Class {
        if self.is_retryable() {
            Class::Transient
        } else {
            Class::Fatal
        }
    }
}

impl Classify for ContinuityError {
    fn class(&self) -> Class {
        if self.is_retryable() {
            Class::Transient
        } else {
            Class::Fatal
        }
    }
}

/// The class of the outermost classified error in `e`'s chain; `None` when nothing in it is
/// classified (treat that as fatal).
pub fn class_of(e: &anyhow::Error) -> Option<Class> {
    e.chain().find_map(class_of_one)
}

fn class_of_one(e: &(dyn std::error::Error + 'static)) -> Option<Class> {
    if let Some(e) = e.downcast_ref::<Error>() {
        return Some(e.class());
    }
    if let Some(e) = e.downcast_ref::<StreamError>() {
        return Some(e.class());
    }
    if let Some(e) = e.downcast_ref::<ContinuityError>() {
        return Some(e.class());
    }
    if let Some(e) = e.downcast_ref::<walflow_pg::ConnectError>() {
        return Some(e.class());
    }
    if let Some(e) = e.downcast_ref::<SinkError>() {
        return Some(e.class());
    }
    if e.downcast_ref::<walflow_config::ConfigError>().is_some() {
        return Some(Class::Fatal);
    }
    None
}

/// The error and its sources, outermost first, joined with `: `.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_class_survives_context_and_decides_the_exit_code() {
        let e = anyhow::Error::new(SinkError::Rejected("400".into())).context("sink http failed");
        assert_eq!(class_of(&e), Some(Class::Rejected));
        assert_eq!(class_of(&e).unwrap().exit_code(), 5);
        let e = anyhow::Error::new(Error::transient("broker down")).context("stopping");
        assert_eq!(class_of(&e), Some(Class::Transient));
        assert_eq!(class_of(&anyhow::anyhow!("plain")), None);
    }

    #[test]
    fn exit_codes_differ_per_class() {
        let codes: std::collections::HashSet<u8> = [
            Class::Transient,
            Class::Definite,
            Class::Rejected,
            Class::Fatal,
        ]
        .iter()
        .map(|c| c.exit_code())
        .collect();
        assert_eq!(codes.len(), 4);
        assert!(!codes.contains(&0) && !codes.contains(&2));
    }
}
