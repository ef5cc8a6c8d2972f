//! What every sink does with its typed settings the same way: one sentence naming the sink
//! type, the key and what it should be, and secrets read from the environment variable a
//! `*_env` key names.

use walflow_core::sink::SinkError;

/// A fatal error about `key` of a `kind` sink, which must be `what`.
pub(crate) fn invalid(kind: &str, key: &str, what: &str) -> SinkError {
    SinkError::Fatal(format!("`{key}` of a {kind} sink must be {what}"))
}

/// The secret in the environment variable `var` that `key` of a `kind` sink names.
#[cfg(any(feature = "kafka", feature = "nats", feature = "redis"))]
pub(crate) fn secret_env(
    kind: &str,
    key: &str,
    var: Option<&str>,
) -> Result<Option<String>, SinkError> {
    let Some(var) = var else {
        return Ok(None);
    };
    std::env::var(var).map(Some).map_err(|_| {
        SinkError::Fatal(format!(
            "`{key}` of a {kind} sink names the environment variable `{var}`, which is not set; export it"
        ))
    })
}

/// Whether encoded records are JSON (the other encoding is MessagePack).
#[cfg(any(feature = "http", feature = "kafka", feature = "redis"))]
pub(crate) fn is_json(payload: &[u8]) -> bool {
    payload.first() == Some(&b'{')
}
