//! Secrets kept out of messages: a URL quoted in an error, a log line or a sink's name with its
//! password replaced by `***`.
//!
//! Errors quote what the user wrote so they can find it, and a sink's name (in logs and
//! metrics) says where it writes; a password inline in a URL (`postgres://user:secret@host/db`,
//! `redis://:secret@host`) or in a `password=` parameter must not travel with them. This works
//! on the text, not on a parsed URL, because the URL an error quotes is often malformed (that
//! is why it is quoted), and it redacts too much rather than too little: everything between
//! the first `:` of the user part and the last `@` goes.

use std::borrow::Cow;

/// What a secret is replaced with.
const HIDDEN: &str = "***";

/// `text` (a URL, or a `key=value` connection string) with every password replaced by `***`.
pub fn url(text: &str) -> Cow<'_, str> {
    let redacted = password_parameters(&user_password(text));
    if redacted == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(redacted)
    }
}

/// Hides the password of `scheme://user:password@host…` (or `user:password@host…`).
fn user_password(text: &str) -> Cow<'_, str> {
    let start = text.find("://").map_or(0, |i| i + 3);
    let Some(at) = text[start..].rfind('@').map(|i| start + i) else {
        return Cow::Borrowed(text);
    };
    let Some(colon) = text[start..at].find(':').map(|i| start + i) else {
        return Cow::Borrowed(text);
    };
    Cow::Owned(format!("{}{HIDDEN}{}", &text[..=colon], &text[at..]))
}

/// Hides the value of every `…password=value` parameter (`?password=`, `&sslpassword=`,
/// ` password='…'`); a value ends at `&`, a blank, or its closing quote.
fn password_parameters(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find("password=") {
        let value_start = search + found + "password=".len();
        let value_end = value_end(text, value_start);
        out.push_str(&text[copied..value_start]);
        out.push_str(HIDDEN);
        copied = value_end;
        search = value_end.max(value_start);
    }
    out.push_str(&text[copied..]);
    out
}

/// Where a parameter value starting at `start` ends.
fn value_end(text: &str, start: usize) -> usize {
    let rest = &text[start..];
    if let Some(quoted) = rest.strip_prefix('\'') {
        return quoted
            .find('\'')
            .map_or(text.len(), |close| start + close + 2);
    }
    rest.find(['&', ' ', '#'])
        .map_or(text.len(), |end| start + end)
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn inline_passwords_are_hidden() {
        for (text, shown) in [
            (
                "postgres://u:secret@db.example.com:5432/app",
                "postgres://u:***@db.example.com:5432/app",
            ),
            (
                "redis://:secret@127.0.0.1:6379",
                "redis://:***@127.0.0.1:6379",
            ),
            ("mysql://u:se:cr@et@h/db", "mysql://u:***@h/db"),
            ("u:secret@h/db", "u:***@h/db"),
            (
                "postgres://u@h/db?sslmode=require&password=secret",
                "postgres://u@h/db?sslmode=require&password=***",
            ),
            (
                "postgres://u@h/db?password=secret&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            (
                "host=h user=u password='se cret' dbname=d",
                "host=h user=u password=*** dbname=d",
            ),
            (
                "nats://u:secret@h:4222?sslPassword=x",
                "nats://u:***@h:4222?sslPassword=***",
            ),
            ("password=", "password=***"),
        ] {
            assert_eq!(url(text), shown, "{text}");
            assert!(!url(text).contains("secret"), "{text}");
        }
    }

    #[test]
    fn urls_without_passwords_are_kept() {
        for text in [
            "postgres://walflow_user@db.example.com:5432/app",
            "postgres://db.example.com/app?sslmode=require",
            "redis://127.0.0.1:6379",
            "https://example.com/hook?x=1",
            "",
        ] {
            assert!(matches!(url(text), std::borrow::Cow::Borrowed(_)), "{text}");
        }
    }
}
