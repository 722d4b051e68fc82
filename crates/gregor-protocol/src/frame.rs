//! Kafka framing: every request and response is a big-endian `i32` length followed by that many
//! bytes. [`FrameDecoder`] splits a byte stream into frames and enforces the size limit
//! (`socket.request.max.bytes`) before any body byte is buffered.

use bytes::{Buf, Bytes, BytesMut};

/// Why a stream can no longer be framed; the connection must be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("negative frame length {0}")]
    NegativeLength(i32),
    #[error("frame of {size} bytes exceeds socket.request.max.bytes ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("empty frame")]
    Empty,
}

/// Splits a byte stream into length-prefixed frames.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
}

impl FrameDecoder {
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder { max_frame_bytes }
    }

    /// The body length announced by the next frame header in `buf`, validated, if the header
    /// has arrived. Lets a reader size its buffer (and refuse) before reading the body.
    pub fn peek_length(&self, buf: &[u8]) -> Result<Option<usize>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        if len < 0 {
            return Err(FrameError::NegativeLength(len));
        }
        let len = len as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame_bytes {
            return Err(FrameError::TooLarge {
                size: len,
                max: self.max_frame_bytes,
            });
        }
        Ok(Some(len))
    }

    /// Takes one whole frame body off the front of `buf`, if one has fully arrived.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.peek_length(buf)? {
            Some(len) if buf.len() >= 4 + len => {
                buf.advance(4);
                Ok(Some(buf.split_to(len).freeze()))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_and_waits_for_partial_ones() {
        let d = FrameDecoder::new(100);
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 9, 9, 0, 0, 0, 3, 1][..]);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap().as_ref(), &[9, 9]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[2, 3]);
        assert_eq!(d.decode(&mut buf).unwrap().unwrap().as_ref(), &[1, 2, 3]);
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_negative_empty_and_oversized_frames() {
        let d = FrameDecoder::new(100);
        let mut neg = BytesMut::from(&(-5i32).to_be_bytes()[..]);
        assert_eq!(d.decode(&mut neg), Err(FrameError::NegativeLength(-5)));
        let mut big = BytesMut::from(&101i32.to_be_bytes()[..]);
        assert!(matches!(
            d.decode(&mut big),
            Err(FrameError::TooLarge { .. })
        ));
        let mut empty = BytesMut::from(&0i32.to_be_bytes()[..]);
        assert_eq!(d.decode(&mut empty), Err(FrameError::Empty));
    }
}
