//! Walking the records of a v2 batch's records section (after decompression).
//!
//! A record is `length: varint` then, within those bytes, `attributes: i8`,
//! `timestampDelta: varlong`, `offsetDelta: varint`, `key: varint-length bytes` (-1 null),
//! `value: varint-length bytes` (-1 null), `headerCount: varint` and that many headers of
//! `key: varint-length bytes` (not null) and `value: varint-length bytes` (-1 null).
//! [`read_record`] checks every length against the bytes that remain, allocates nothing and
//! returns slices of its input.

use crate::{Reader, WireError};

/// One record, as slices of the records section it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// The whole record, including its length prefix.
    pub bytes: &'a [u8],
    /// The record's attributes byte (unused by Kafka today).
    pub attributes: i8,
    /// Timestamp relative to the batch's `baseTimestamp`.
    pub timestamp_delta: i64,
    /// Offset relative to the batch's `baseOffset`.
    pub offset_delta: i32,
    /// Key; `None` if null.
    pub key: Option<&'a [u8]>,
    /// Value; `None` if null (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Number of headers.
    pub header_count: i32,
    /// The headers section (after the count), already checked to hold exactly
    /// `header_count` well-formed headers.
    pub headers: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// The headers as `(key, value)` pairs, in wire order (keys may repeat).
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> {
        let mut r = Reader::new(self.headers);
        (0..self.header_count).map_while(move |_| read_header(&mut r).ok())
    }
}

fn read_header<'a>(r: &mut Reader<'a>) -> Result<(&'a [u8], Option<&'a [u8]>), WireError> {
    let key = r
        .varint_bytes("header key length")?
        .ok_or(WireError::Negative {
            what: "header key length",
            value: -1,
        })?;
    Ok((key, r.varint_bytes("header value length")?))
}

/// The record at `*pos` in `section`, advancing `*pos` past it.
pub fn read_record<'a>(section: &'a [u8], pos: &mut usize) -> Result<RecordView<'a>, WireError> {
    let start = *pos;
    let mut outer = Reader::new(&section[start.min(section.len())..]);
    let len = outer.varint()?;
    if len < 0 {
        return Err(WireError::Negative {
            what: "record length",
            value: i64::from(len),
        });
    }
    let body = outer.take(len as usize)?;
    let end = section.len() - outer.remaining();
    let mut r = Reader::new(body);
    let attributes = r.i8()?;
    let timestamp_delta = r.varlong()?;
    let offset_delta = r.varint()?;
    let key = r.varint_bytes("key length")?;
    let value = r.varint_bytes("value length")?;
    let header_count = r.varint()?;
    if header_count < 0 {
        return Err(WireError::Negative {
            what: "header count",
            value: i64::from(header_count),
        });
    }
    let headers = r.rest();
    for _ in 0..header_count {
        read_header(&mut r)?;
    }
    if !r.is_empty() {
        return Err(WireError::TrailingInRecord(r.remaining()));
    }
    *pos = end;
    Ok(RecordView {
        bytes: &section[start..end],
        attributes,
        timestamp_delta,
        offset_delta,
        key,
        value,
        header_count,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::varint::{put_varint, put_varlong};
    use proptest::prelude::*;

    fn record(
        offset_delta: i32,
        key: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) -> Vec<u8> {
        let mut body = vec![0u8];
        put_varlong(&mut body, 5);
        put_varint(&mut body, offset_delta);
        let field = |b: &mut Vec<u8>, f: Option<&[u8]>| match f {
            None => put_varint(b, -1),
            Some(f) => {
                put_varint(b, f.len() as i32);
                b.extend_from_slice(f);
            }
        };
        field(&mut body, key);
        field(&mut body, Some(b"v"));
        put_varint(&mut body, headers.len() as i32);
        for (k, v) in headers {
            field(&mut body, Some(k));
            field(&mut body, *v);
        }
        let mut out = Vec::new();
        put_varint(&mut out, body.len() as i32);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn walks_records_and_headers() {
        let mut section = record(0, Some(b"k"), &[(b"h", Some(b"1")), (b"h", None)]);
        section.extend(record(1, None, &[]));
        let mut pos = 0;
        let a = read_record(&section, &mut pos).unwrap();
        assert_eq!(
            (a.offset_delta, a.key, a.value),
            (0, Some(&b"k"[..]), Some(&b"v"[..]))
        );
        assert_eq!(a.timestamp_delta, 5);
        let h: Vec<_> = a.headers().collect();
        assert_eq!(h, [(&b"h"[..], Some(&b"1"[..])), (&b"h"[..], None)]);
        let b = read_record(&section, &mut pos).unwrap();
        assert_eq!((b.offset_delta, b.key), (1, None));
        assert_eq!(pos, section.len());
        assert_eq!(a.bytes.len() + b.bytes.len(), section.len());
    }

    #[test]
    fn refuses_bytes_left_inside_a_record() {
        let mut section = record(0, None, &[]);
        section[0] += 4; // zig-zag: the length now covers two more bytes
        section.extend([0, 0]);
        assert_eq!(
            read_record(&section, &mut 0),
            Err(WireError::TrailingInRecord(2))
        );
    }

    proptest! {
        #[test]
        fn never_panics(section in proptest::collection::vec(any::<u8>(), 0..64), pos in 0usize..80) {
            let mut p = pos;
            let _ = read_record(&section, &mut p);
        }
    }
}
