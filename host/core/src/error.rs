//! Errors as operators read them.
//!
//! Causes are often the useful part ("connection refused" under "cannot reach broker"), and
//! `Display` shows only the outermost error; [`chain`] spells out all of them on one line.

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
