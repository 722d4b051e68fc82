//! Kafka's varints: unsigned LEB128 (`UNSIGNED_VARINT`, used by flexible versions) and
//! zig-zag signed varints (`VARINT`, `VARLONG`, used inside records).

use bytes::BufMut;

use crate::WireError;

/// Longest encoding of a 64-bit varint.
pub const MAX_VARLONG_BYTES: usize = 10;

/// Zig-zag encoding of a signed value.
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag`].
pub fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// An unsigned varint at `*pos`, advancing `*pos` past it. As Java's `ByteUtils`, bits
/// beyond 64 in a tenth byte are dropped rather than refused.
pub fn read_unsigned(buf: &[u8], pos: &mut usize) -> Result<u64, WireError> {
    let mut value: u64 = 0;
    for i in 0..MAX_VARLONG_BYTES {
        let b = *buf.get(*pos).ok_or(WireError::TruncatedVarint)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(WireError::VarintTooLong)
}

/// A zig-zag varlong at `*pos`.
pub fn read_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, WireError> {
    read_unsigned(buf, pos).map(unzigzag)
}

/// A zig-zag varint at `*pos` that must fit an `i32`.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<i32, WireError> {
    let v = read_varlong(buf, pos)?;
    i32::try_from(v).map_err(|_| WireError::VarintOutOfRange(v))
}

/// Appends `v` as an unsigned varint.
pub fn put_unsigned(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// Appends `v` as a zig-zag varlong.
pub fn put_varlong(out: &mut impl BufMut, v: i64) {
    put_unsigned(out, zigzag(v));
}

/// Appends `v` as a zig-zag varint.
pub fn put_varint(out: &mut impl BufMut, v: i32) {
    put_varlong(out, i64::from(v));
}

/// Encoded size of `v` as a zig-zag varlong.
pub fn varlong_len(v: i64) -> usize {
    let bits = 64 - zigzag(v).leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varlong_roundtrips(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            prop_assert_eq!(buf.len(), varlong_len(v));
            let mut pos = 0;
            prop_assert_eq!(read_varlong(&buf, &mut pos), Ok(v));
            prop_assert_eq!(pos, buf.len());
        }

        #[test]
        fn never_panics(buf in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut pos = 0;
            let _ = read_varint(&buf, &mut pos);
        }
    }

    #[test]
    fn known_encodings_and_errors() {
        let mut buf = Vec::new();
        put_varint(&mut buf, -1);
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0x01, 0xd8, 0x04]);
        let mut pos = 0;
        assert_eq!(
            read_varint(&[0x80], &mut pos),
            Err(WireError::TruncatedVarint)
        );
        pos = 0;
        assert_eq!(
            read_unsigned(&[0xff; 11], &mut pos),
            Err(WireError::VarintTooLong)
        );
        let mut big = Vec::new();
        put_varlong(&mut big, i64::from(i32::MAX) + 1);
        pos = 0;
        assert!(matches!(
            read_varint(&big, &mut pos),
            Err(WireError::VarintOutOfRange(_))
        ));
    }
}
