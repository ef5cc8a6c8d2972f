//! The encoded event key for sinks that partition or de-duplicate by it.
//!
//! The delivery loop may fill `EncodedRecord::key`; when it does not, the key is encoded here
//! from the event, in the same encoding as the record's payload, so a consumer reads key and
//! value alike.

use super::EncodedRecord;
use super::settings::is_json;
use walflow_config::Encoding;
use walflow_core::encode::{EncodeOptions, Encoder};
use walflow_core::event::Event;

/// The key bytes of `record` (which was encoded from `event`); `None` for a keyless event.
pub(crate) fn record_key(record: &EncodedRecord, event: Option<&Event>) -> Option<Vec<u8>> {
    if let Some(key) = &record.key {
        return Some(key.clone());
    }
    if record.value.is_some() {
        // A Debezium record's key is its own (`None`: null); its event is not at its index.
        return None;
    }
    let event = event?;
    event.relation.key_indices().next()?;
    let encoding = if is_json(&record.payload) {
        Encoding::Json
    } else {
        Encoding::Msgpack
    };
    Encoder::new(encoding, EncodeOptions::default())
        .encode_key(event)
        .ok()
}
