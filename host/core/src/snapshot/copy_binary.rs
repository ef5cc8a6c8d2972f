//! PostgreSQL's binary COPY format, one CopyData message at a time: a signature and header
//! before the first tuple, then per tuple a field count and, per field, a length (-1 for NULL)
//! and the value in its type's binary send format; a field count of -1 ends the data.
//!
//! The snapshot reads a table in binary when every column has a [`BinaryKind`]
//! ([`binary_columns`]): the server spends less time formatting and the host less time
//! parsing (see [`crate::value::binary`]). The server sends the header with the first tuple
//! and one tuple per message, but nothing here depends on that beyond a tuple not spanning
//! messages; anything else is [`Malformed`], reported as the connection's error.

use std::sync::Arc;

use crate::event::{Relation, Row, Value};
use crate::value::TextCodec;
use crate::value::binary::BinaryKind;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Header flag bit 16: each tuple carries an OID field (never requested here).
const FLAG_OIDS: u32 = 1 << 16;

/// Each column's binary kind, when all of them have one (`None`: read the table as text).
pub fn binary_columns(relation: &Relation, utc_session: bool) -> Option<Arc<[BinaryKind]>> {
    relation
        .columns
        .iter()
        .map(|c| BinaryKind::of(c.type_oid, utc_session))
        .collect()
}

/// Binary COPY data that does not follow the format.
#[derive(Debug, thiserror::Error)]
#[error("malformed binary COPY data from the server: {0}")]
pub struct Malformed(&'static str);

/// The state of one binary COPY: whether the header and the end marker have been read.
#[derive(Debug, Default)]
pub struct BinaryCopy {
    header_read: bool,
    ended: bool,
}

impl BinaryCopy {
    /// Decodes the tuples of one CopyData message into rows, handing each to `emit`.
    /// `kinds` and `codecs` describe the columns (the codecs name types in raw fallbacks).
    pub fn rows(
        &mut self,
        mut message: &[u8],
        kinds: &[BinaryKind],
        codecs: &[TextCodec],
        mut emit: impl FnMut(Row),
    ) -> Result<(), Malformed> {
        if !self.header_read {
            message = header(message)?;
            self.header_read = true;
        }
        while !message.is_empty() {
            if self.ended {
                return Err(Malformed("data after the end marker"));
            }
            let count = i16::from_be_bytes(array(&mut message)?);
            if count == -1 {
                self.ended = true;
                continue;
            }
            if usize::try_from(count).ok() != Some(kinds.len()) {
                return Err(Malformed("a tuple with an unexpected number of fields"));
            }
            let mut row = Vec::with_capacity(kinds.len());
            for (kind, codec) in kinds.iter().zip(codecs) {
                row.push(field(&mut message, *kind, codec)?);
            }
            emit(row);
        }
        Ok(())
    }
}

/// Checks the signature and skips the flags and the header extension.
fn header(mut message: &[u8]) -> Result<&[u8], Malformed> {
    if take(&mut message, SIGNATURE.len())? != SIGNATURE {
        return Err(Malformed("no binary COPY signature"));
    }
    let flags = u32::from_be_bytes(array(&mut message)?);
    if flags & FLAG_OIDS != 0 {
        return Err(Malformed("tuples with OIDs"));
    }
    let extension = u32::from_be_bytes(array(&mut message)?);
    take(&mut message, extension as usize)?;
    Ok(message)
}

fn field(message: &mut &[u8], kind: BinaryKind, codec: &TextCodec) -> Result<Value, Malformed> {
    let len = i32::from_be_bytes(array(message)?);
    if len == -1 {
        return Ok(Value::Null);
    }
    let len = usize::try_from(len).map_err(|_| Malformed("a negative field length"))?;
    Ok(kind.decode(&codec.type_name, take(message, len)?))
}

/// The next `N` bytes, for a fixed-width big-endian integer.
fn array<const N: usize>(message: &mut &[u8]) -> Result<[u8; N], Malformed> {
    let mut out = [0; N];
    out.copy_from_slice(take(message, N)?);
    Ok(out)
}

fn take<'a>(message: &mut &'a [u8], n: usize) -> Result<&'a [u8], Malformed> {
    if message.len() < n {
        return Err(Malformed("a tuple cut short"));
    }
    let (head, rest) = message.split_at(n);
    *message = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::TypeRegistry;

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => out.extend((-1i32).to_be_bytes()),
                Some(bytes) => {
                    out.extend((bytes.len() as i32).to_be_bytes());
                    out.extend(*bytes);
                }
            }
        }
        out
    }

    fn header_bytes() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend(0u32.to_be_bytes());
        out.extend(4u32.to_be_bytes());
        out.extend(b"skip");
        out
    }

    fn decode(messages: &[Vec<u8>]) -> Result<Vec<Row>, Malformed> {
        let registry = TypeRegistry::new();
        let codecs = [registry.codec(23), registry.codec(25)];
        let kinds = [BinaryKind::Int4, BinaryKind::Text];
        let mut copy = BinaryCopy::default();
        let mut rows = Vec::new();
        for m in messages {
            copy.rows(m, &kinds, &codecs, |r| rows.push(r))?;
        }
        Ok(rows)
    }

    #[test]
    fn header_tuples_nulls_and_the_end_marker() {
        let mut first = header_bytes();
        first.extend(tuple(&[Some(&7i32.to_be_bytes()), Some(b"seven")]));
        let second = tuple(&[Some(&8i32.to_be_bytes()), None]);
        let rows = decode(&[first, second, (-1i16).to_be_bytes().to_vec()]).unwrap();
        assert_eq!(
            rows,
            vec![
                vec![Value::Int(7), Value::Text("seven".into())],
                vec![Value::Int(8), Value::Null],
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let one = tuple(&[Some(&7i32.to_be_bytes()), Some(b"x")]);
        assert!(decode(std::slice::from_ref(&one)).is_err(), "no header");
        let mut cut = header_bytes();
        cut.extend(&one[..one.len() - 1]);
        assert!(decode(&[cut]).is_err());
        let mut wide = header_bytes();
        wide.extend(tuple(&[None, None, None]));
        assert!(decode(&[wide]).is_err());
        let mut after_end = header_bytes();
        after_end.extend((-1i16).to_be_bytes());
        after_end.extend(&one);
        assert!(decode(&[after_end]).is_err());
        let mut oids = SIGNATURE.to_vec();
        oids.extend(FLAG_OIDS.to_be_bytes());
        oids.extend(0u32.to_be_bytes());
        assert!(decode(&[oids]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_after_a_header_are_accepted_or_refused(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)
        ) {
            let mut message = header_bytes();
            message.extend(bytes);
            let _ = decode(&[message]);
        }
    }
}
