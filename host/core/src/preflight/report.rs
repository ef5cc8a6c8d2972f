//! Findings of the preflight and their rendering: one aligned line per check, and under each
//! problem the SQL or parameter change that fixes it.

use std::fmt::Write as _;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Ready.
    Ok,
    /// Works, but worth a look (e.g. deletes carry only keys).
    Warn,
    /// walflow will not work until this is fixed.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Outcome.
    pub status: Status,
    /// What was checked, e.g. `wal_level`.
    pub check: String,
    /// What was found.
    pub message: String,
    /// The SQL or setting that fixes it.
    pub fix: Option<String>,
}

/// All findings of one run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// In the order checked.
    pub findings: Vec<Finding>,
}

impl Report {
    /// Adds a passing check.
    pub fn ok(&mut self, check: &str, message: impl Into<String>) {
        self.push(Status::Ok, check, message.into(), None);
    }

    /// Adds a warning with its fix.
    pub fn warn(&mut self, check: &str, message: impl Into<String>, fix: impl Into<String>) {
        self.push(Status::Warn, check, message.into(), Some(fix.into()));
    }

    /// Adds a failure with its fix.
    pub fn fail(&mut self, check: &str, message: impl Into<String>, fix: impl Into<String>) {
        self.push(Status::Fail, check, message.into(), Some(fix.into()));
    }

    fn push(&mut self, status: Status, check: &str, message: String, fix: Option<String>) {
        self.findings.push(Finding {
            status,
            check: check.to_string(),
            message,
            fix,
        });
    }

    /// Whether nothing failed.
    pub fn ready(&self) -> bool {
        !self.findings.iter().any(|f| f.status == Status::Fail)
    }

    /// How many findings have `status`.
    pub fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// The findings of the check named `check`.
    pub fn find(&self, check: &str) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.check == check).collect()
    }

    /// The aligned text shown to the user.
    pub fn render(&self) -> String {
        let width = self
            .findings
            .iter()
            .map(|f| f.check.len())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for f in &self.findings {
            let _ = writeln!(
                out,
                "  {:<4}  {:<width$}  {}",
                f.status.label(),
                f.check,
                f.message
            );
            if let Some(fix) = &f.fix {
                let indent = " ".repeat(width + 10);
                for (i, line) in fix.lines().enumerate() {
                    let lead = if i == 0 { "fix: " } else { "     " };
                    let _ = writeln!(out, "{indent}{lead}{line}");
                }
            }
        }
        let (fails, warns) = (self.count(Status::Fail), self.count(Status::Warn));
        let _ = writeln!(
            out,
            "\n{}: {fails} problem{} to fix, {warns} warning{}",
            if fails == 0 { "ready" } else { "not ready" },
            if fails == 1 { "" } else { "s" },
            if warns == 1 { "" } else { "s" },
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_aligned_with_fixes() {
        let mut r = Report::default();
        r.ok("server version", "PostgreSQL 15.4");
        r.fail(
            "wal_level",
            "is replica",
            "ALTER SYSTEM SET wal_level = 'logical';\nthen restart",
        );
        let text = r.render();
        assert!(
            text.contains("  ok    server version  PostgreSQL 15.4\n"),
            "{text}"
        );
        assert!(
            text.contains("  FAIL  wal_level       is replica\n"),
            "{text}"
        );
        assert!(
            text.contains("fix: ALTER SYSTEM SET wal_level = 'logical';\n"),
            "{text}"
        );
        assert!(
            text.contains("not ready: 1 problem to fix, 0 warnings"),
            "{text}"
        );
        assert!(!r.ready());
    }
}
