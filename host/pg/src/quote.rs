//! Quoting names and text into SQL: the one place walflow does it, so every statement, hint and
//! setup script escapes the same way. Built on `postgres_protocol::escape`, a port of libpq's
//! `PQescapeIdentifier`/`PQescapeLiteral`.
//!
//! Prefer query parameters; quote only where PostgreSQL takes no parameters (DDL, replication
//! commands, `SET TRANSACTION SNAPSHOT`, scripts and hints a person runs).

use postgres_protocol::escape::{escape_identifier, escape_literal};

/// An identifier: `"name"` with inner double quotes doubled, so any name (mixed case, spaces,
/// keywords) means exactly itself.
pub fn ident(name: &str) -> String {
    escape_identifier(name)
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// A string literal, right whatever `standard_conforming_strings` says: `'text'` with inner
/// quotes doubled, or, when the text has backslashes, ` E'te\\xt'` with them doubled too (the
/// leading space keeps it a separate token even right after an identifier).
pub fn literal(text: &str) -> String {
    escape_literal(text)
}

/// A string literal in a replication command (`START_REPLICATION … ("publication_names" '…')`):
/// `'text'` with inner quotes doubled and nothing else. The walsender parses these commands
/// with its own small grammar, which has no `E'…'` strings and takes backslashes literally, so
/// [`literal`]'s form for text with backslashes would be a syntax error there.
pub fn replication_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_double_inner_quotes() {
        assert_eq!(ident("plain"), "\"plain\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(ident("back\\slash"), "\"back\\slash\"");
        assert_eq!(qualified("My Schema", "t"), "\"My Schema\".\"t\"");
    }

    #[test]
    fn literals_double_quotes_and_escape_backslashes() {
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal(""), "''");
        assert_eq!(literal("a\\_b'c"), " E'a\\\\_b''c'");
    }

    #[test]
    fn replication_literals_keep_backslashes() {
        assert_eq!(replication_literal("it's"), "'it''s'");
        assert_eq!(replication_literal("\"a\\b\""), "'\"a\\b\"'");
    }
}
