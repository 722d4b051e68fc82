//! The compression codecs of Kafka record batches, in Kafka's framing, with bounded
//! decompression.
//!
//! Shared by `gregor-protocol` (validation of produced batches) and `gregor-log` (the
//! compaction cleaner, which decompresses stored batches and recompresses what it keeps), so
//! that neither depends on the other and the bounded path exists once.
//!
//! Codec ids are the low three bits of a v2 batch's `attributes`: 1 gzip, 2 snappy (xerial
//! framing, as the Java client writes it; a single raw block is also accepted on read),
//! 3 lz4 (frame format), 4 zstd (frame format).
//!
//! Decompression never produces more than the caller's limit: it fails as soon as the output
//! would exceed it (a zip bomb costs at most the limit plus the codec's bounded working set;
//! zstd's window is capped at 16 MiB). `kafka-protocol`'s decoder has no such cap, which is
//! why Gregor does not use it on bytes from clients or disk.

use std::io::{Read, Write};

/// Why data could not be decompressed or compressed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompressionError {
    /// The codec id is not one of 1–4.
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    /// The codec rejected the data.
    #[error("{codec} data does not decompress: {reason}")]
    Decompress {
        /// Name of the codec.
        codec: &'static str,
        /// The codec's error.
        reason: String,
    },
    /// The output would exceed the limit.
    #[error("batch decompresses to more than {limit} bytes")]
    TooLarge {
        /// The limit that was hit.
        limit: usize,
    },
    /// The codec failed to compress (should not happen for in-memory data).
    #[error("{codec} compression failed: {reason}")]
    Compress {
        /// Name of the codec.
        codec: &'static str,
        /// The codec's error.
        reason: String,
    },
}

/// Name of a codec id as Kafka spells it (`none` for 0 and unknown ids).
pub fn codec_name(codec: u8) -> &'static str {
    match codec {
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "none",
    }
}

/// Decompresses `input` with Kafka's framing for `codec`, failing as soon as the output would
/// exceed `limit` bytes. Memory used is at most `limit` (up to twice that in `Vec` capacity
/// while growing) plus the codec's bounded working set.
pub fn decompress_bounded(
    codec: u8,
    input: &[u8],
    limit: usize,
) -> Result<Vec<u8>, CompressionError> {
    let name = codec_name(codec);
    let fail = |e: &dyn std::fmt::Display| CompressionError::Decompress {
        codec: name,
        reason: e.to_string(),
    };
    match codec {
        1 => read_bounded(flate2::read::GzDecoder::new(input), limit, name),
        2 => snappy_bounded(input, limit),
        3 => read_bounded(lz4::Decoder::new(input).map_err(|e| fail(&e))?, limit, name),
        4 => {
            let mut d = zstd::stream::read::Decoder::new(input).map_err(|e| fail(&e))?;
            // Bound the decoder's window (and so its working memory) to 16 MiB; producers'
            // default levels use far smaller windows.
            d.window_log_max(24).map_err(|e| fail(&e))?;
            read_bounded(d, limit, name)
        }
        other => Err(CompressionError::UnknownCodec(other)),
    }
}

fn read_bounded(
    reader: impl Read,
    limit: usize,
    codec: &'static str,
) -> Result<Vec<u8>, CompressionError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CompressionError::Decompress {
            codec,
            reason: e.to_string(),
        })?;
    if out.len() > limit {
        return Err(CompressionError::TooLarge { limit });
    }
    Ok(out)
}

/// Magic of xerial's snappy framing, followed by version 1 and compatible version 1 (`i32`s).
const SNAPPY_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const SNAPPY_HEADER_LEN: usize = 16;
/// Uncompressed bytes per xerial block (the Java client's default block size).
const SNAPPY_BLOCK: usize = 32 * 1024;

/// Kafka's snappy: xerial framing (magic header, then `u32` length-prefixed raw blocks), or a
/// single raw snappy block when the magic is absent (as the Java client accepts).
fn snappy_bounded(input: &[u8], limit: usize) -> Result<Vec<u8>, CompressionError> {
    let fail = |e: &dyn std::fmt::Display| CompressionError::Decompress {
        codec: "snappy",
        reason: e.to_string(),
    };
    let raw_block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), CompressionError> {
        let len = snap::raw::decompress_len(block).map_err(|e| fail(&e))?;
        if out.len().saturating_add(len) > limit {
            return Err(CompressionError::TooLarge { limit });
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|e| fail(&e))?;
        Ok(())
    };
    let mut out = Vec::new();
    if input.len() < SNAPPY_HEADER_LEN || &input[..SNAPPY_MAGIC.len()] != SNAPPY_MAGIC {
        raw_block(input, &mut out)?;
        return Ok(out);
    }
    let mut rest = &input[SNAPPY_HEADER_LEN..];
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(fail(&"truncated block length"));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if len > rest.len() {
            return Err(fail(&"block longer than the data"));
        }
        raw_block(&rest[..len], &mut out)?;
        rest = &rest[len..];
    }
    Ok(out)
}

/// Compresses `input` with Kafka's framing for `codec`, as the Java client would: gzip at the
/// default level, snappy in xerial blocks of 32 KiB, lz4 frames with independent 64 KiB
/// blocks and no checksums, zstd at level 3.
pub fn compress(codec: u8, input: &[u8]) -> Result<Vec<u8>, CompressionError> {
    let name = codec_name(codec);
    let fail = |e: &dyn std::fmt::Display| CompressionError::Compress {
        codec: name,
        reason: e.to_string(),
    };
    match codec {
        1 => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(input.len() / 2 + 64),
                flate2::Compression::default(),
            );
            enc.write_all(input).map_err(|e| fail(&e))?;
            enc.finish().map_err(|e| fail(&e))
        }
        2 => {
            let mut out = Vec::with_capacity(SNAPPY_HEADER_LEN + input.len() / 2 + 64);
            out.extend_from_slice(SNAPPY_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes());
            out.extend_from_slice(&1i32.to_be_bytes());
            let mut enc = snap::raw::Encoder::new();
            let mut block = vec![0u8; snap::raw::max_compress_len(SNAPPY_BLOCK)];
            for chunk in input.chunks(SNAPPY_BLOCK) {
                let n = enc.compress(chunk, &mut block).map_err(|e| fail(&e))?;
                let len = u32::try_from(n).map_err(|e| fail(&e))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&block[..n]);
            }
            Ok(out)
        }
        3 => {
            let mut enc = lz4::EncoderBuilder::new()
                .block_size(lz4::BlockSize::Max64KB)
                .block_mode(lz4::BlockMode::Independent)
                .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
                .checksum(lz4::ContentChecksum::NoChecksum)
                .build(Vec::with_capacity(input.len() / 2 + 64))
                .map_err(|e| fail(&e))?;
            enc.write_all(input).map_err(|e| fail(&e))?;
            let (out, result) = enc.finish();
            result.map_err(|e| fail(&e))?;
            Ok(out)
        }
        4 => zstd::bulk::compress(input, 3).map_err(|e| fail(&e)),
        other => Err(CompressionError::UnknownCodec(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| format!("record-{}-", i % 977).into_bytes())
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let data = sample();
        for codec in 1..=4 {
            for input in [&data[..], &data[..10], &[][..]] {
                let c = compress(codec, input).unwrap();
                let d = decompress_bounded(codec, &c, input.len()).unwrap();
                assert_eq!(d, input, "{}", codec_name(codec));
            }
            assert!(compress(codec, &data).unwrap().len() < data.len() / 4);
        }
    }

    #[test]
    fn limit_is_enforced_for_every_codec() {
        let data = sample();
        for codec in 1..=4 {
            let c = compress(codec, &data).unwrap();
            assert_eq!(
                decompress_bounded(codec, &c, data.len() - 1),
                Err(CompressionError::TooLarge {
                    limit: data.len() - 1
                }),
                "{}",
                codec_name(codec)
            );
        }
    }

    #[test]
    fn unknown_codecs_and_garbage_are_errors() {
        assert_eq!(compress(5, b"x"), Err(CompressionError::UnknownCodec(5)));
        assert_eq!(
            decompress_bounded(7, b"x", 10),
            Err(CompressionError::UnknownCodec(7))
        );
        for codec in 1..=4 {
            assert!(decompress_bounded(codec, b"\x82SNAPPY\x00garbage!xyz", 1 << 20).is_err());
        }
    }
}
