//! Big-endian readers: a bounds-checked cursor for untrusted bytes ([`Reader`]) and
//! fixed-position helpers for headers whose length the caller already checked.

use crate::{varint, WireError};

/// A cursor over untrusted bytes; every read is checked against what remains.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader of `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes not yet read.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated {
                needed: n,
                remaining: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// An `i8`.
    pub fn i8(&mut self) -> Result<i8, WireError> {
        Ok(i8::from_be_bytes(self.array()?))
    }

    /// A big-endian `i16`.
    pub fn i16(&mut self) -> Result<i16, WireError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    /// A big-endian `i32`.
    pub fn i32(&mut self) -> Result<i32, WireError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    /// A big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A big-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, WireError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// A zig-zag varlong.
    pub fn varlong(&mut self) -> Result<i64, WireError> {
        let mut pos = 0;
        let v = varint::read_varlong(self.buf, &mut pos)?;
        self.buf = &self.buf[pos..];
        Ok(v)
    }

    /// A zig-zag varint that fits an `i32`.
    pub fn varint(&mut self) -> Result<i32, WireError> {
        let mut pos = 0;
        let v = varint::read_varint(self.buf, &mut pos)?;
        self.buf = &self.buf[pos..];
        Ok(v)
    }

    /// A varint length and that many bytes; `None` for length -1. `what` names the field in
    /// the error for other negative lengths.
    pub fn varint_bytes(&mut self, what: &'static str) -> Result<Option<&'a [u8]>, WireError> {
        match self.varint()? {
            -1 => Ok(None),
            n if n < 0 => Err(WireError::Negative {
                what,
                value: i64::from(n),
            }),
            n => self.take(n as usize).map(Some),
        }
    }

    /// An `i16` length and that many bytes (Kafka's `STRING`/`NULLABLE_STRING` framing);
    /// `None` for a negative length.
    pub fn i16_bytes(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        match self.i16()? {
            n if n < 0 => Ok(None),
            n => self.take(n as usize).map(Some),
        }
    }

    /// A `NULLABLE_STRING` (`i16` length, -1 null).
    pub fn nullable_string(&mut self) -> Result<Option<String>, WireError> {
        match self.i16_bytes()? {
            None => Ok(None),
            Some(b) => String::from_utf8(b.to_vec())
                .map(Some)
                .map_err(|_| WireError::NotUtf8),
        }
    }

    /// A `STRING` (`i16` length; null refused).
    pub fn string(&mut self) -> Result<String, WireError> {
        self.nullable_string()?.ok_or(WireError::Null)
    }

    /// An `i32` array count, checked against the bytes left given that each element takes
    /// at least `min_element` bytes; a negative (null) count is 0. Nothing is allocated from
    /// a count that the input cannot hold.
    pub fn array_len(&mut self, min_element: usize) -> Result<usize, WireError> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(0);
        }
        if (n as usize).saturating_mul(min_element) > self.buf.len() {
            return Err(WireError::CountTooLarge(n));
        }
        Ok(n as usize)
    }

    /// An `i32` length and that many bytes (Kafka's `BYTES` framing); `None` for a negative
    /// length.
    pub fn i32_bytes(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        match self.i32()? {
            n if n < 0 => Ok(None),
            n => self.take(n as usize).map(Some),
        }
    }
}

fn at<const N: usize>(buf: &[u8], pos: usize) -> [u8; N] {
    buf[pos..pos + N].try_into().expect("N bytes")
}

macro_rules! be_at {
    ($($name:ident: $t:ty),*) => {$(
        #[doc = concat!("The big-endian `", stringify!($t), "` at `pos`. Panics if `buf` is too short.")]
        #[inline]
        pub fn $name(buf: &[u8], pos: usize) -> $t {
            <$t>::from_be_bytes(at(buf, pos))
        }
    )*};
}

be_at!(be_i16: i16, be_i32: i32, be_u32: u32, be_i64: i64, be_u64: u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_refuses_short_input() {
        let mut r = Reader::new(&[0, 1, 0, 0, 0, 2, 0xff, 0xff, 9]);
        assert_eq!(r.i16(), Ok(1));
        assert_eq!(r.i32(), Ok(2));
        assert_eq!(r.i16_bytes(), Ok(None));
        assert_eq!(
            r.i64(),
            Err(WireError::Truncated {
                needed: 8,
                remaining: 1
            })
        );
        assert_eq!(r.rest(), &[9]);
        assert_eq!(be_i32(&[0, 0, 1, 0], 0), 256);
    }
}
