//! Partitioners: Java-compatible murmur2 for keyed records, sticky for unkeyed ones.

/// Kafka's `Utils.murmur2` (the Java client's, also librdkafka's `murmur2` and
/// `murmur2_random` partitioners), as a signed 32-bit value.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() == 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client (and librdkafka's `murmur2_random`) picks for `key`:
/// `(murmur2(key) & 0x7fffffff) % partitions`.
///
/// ```
/// use gregor_client::partitioner::partition_for_key;
/// assert_eq!(partition_for_key(b"key-0", 3), partition_for_key(b"key-0", 3));
/// assert!(partition_for_key(b"anything", 7) < 7);
/// ```
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Sticky partitioning for unkeyed records (KIP-480): stay on one partition until a batch
/// for it is sealed, then move to another one at random.
#[derive(Debug, Default)]
pub struct StickyPartitioner {
    current: std::collections::HashMap<String, i32>,
}

impl StickyPartitioner {
    /// The current sticky partition of `topic`.
    pub fn partition(&mut self, topic: &str, partitions: i32) -> i32 {
        if let Some(&p) = self.current.get(topic) {
            if p < partitions {
                return p;
            }
        }
        let p = fastrand::i32(0..partitions);
        self.current.insert(topic.to_string(), p);
        p
    }

    /// A batch of `topic` was sealed on `sealed`: pick a different partition next time.
    pub fn batch_sealed(&mut self, topic: &str, sealed: i32, partitions: i32) {
        if self.current.get(topic) != Some(&sealed) {
            return;
        }
        let next = if partitions <= 1 {
            0
        } else {
            let r = fastrand::i32(0..partitions - 1);
            if r >= sealed {
                r + 1
            } else {
                r
            }
        };
        self.current.insert(topic.to_string(), next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2` (Java), which librdkafka's
    /// `rdmurmur2.c` unit test uses too.
    #[test]
    fn murmur2_matches_java_vectors() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, want) in cases {
            assert_eq!(murmur2(key), *want, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn java_partition_of_known_keys() {
        // (murmur2 & 0x7fffffff) % n, computed with the Java formula.
        assert_eq!(
            partition_for_key(b"21", 3),
            ((-973932308i32) & 0x7fffffff) % 3
        );
        for n in 1..20 {
            for i in 0..100 {
                let k = format!("key-{i}");
                assert!((0..n).contains(&partition_for_key(k.as_bytes(), n)));
            }
        }
    }

    #[test]
    fn sticky_switches_after_seal() {
        let mut s = StickyPartitioner::default();
        let p = s.partition("t", 4);
        assert_eq!(s.partition("t", 4), p);
        s.batch_sealed("t", p, 4);
        assert_ne!(s.partition("t", 4), p);
        let mut one = StickyPartitioner::default();
        assert_eq!(one.partition("u", 1), 0);
        one.batch_sealed("u", 0, 1);
        assert_eq!(one.partition("u", 1), 0);
    }
}
