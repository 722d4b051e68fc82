//! Kafka's `__transaction_state` record schemas (key v0, value v0) and the control record
//! (transaction marker) key/value, encoded by hand: `kafka-protocol` has no types for them.
//!
//! Key v0: `version: i16 = 0`, `transactional_id: string` (i16 length).
//! Value v0: `version: i16 = 0`, `producer_id: i64`, `producer_epoch: i16`,
//! `transaction_timeout_ms: i32`, `status: i8`, `partitions: [topic: string,
//! partition_ids: [i32]]` (nullable array, i32 counts), `last_update_ms: i64`,
//! `start_ms: i64`.
//!
//! Control record key: `version: i16 = 0`, `type: i16` (0 = ABORT, 1 = COMMIT);
//! value: `version: i16 = 0`, `coordinator_epoch: i32`.

use std::collections::BTreeSet;

use gregor_wire::{Reader, WireError};

use crate::coordinator::{TxnMetadata, TxnStatus};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad __transaction_state record: {0}")]
pub struct RecordError(pub String);

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    out.extend_from_slice(&(len as i16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

/// The record key of a transactional id.
pub fn txn_key(transactional_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + transactional_id.len());
    out.extend_from_slice(&0i16.to_be_bytes());
    put_str(&mut out, transactional_id);
    out
}

/// The record value (v0) of a transaction's metadata.
pub fn txn_value(m: &TxnMetadata) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&0i16.to_be_bytes());
    out.extend_from_slice(&m.producer_id.to_be_bytes());
    out.extend_from_slice(&m.producer_epoch.to_be_bytes());
    out.extend_from_slice(&m.timeout_ms.to_be_bytes());
    out.push(m.status as u8);
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for (t, p) in &m.partitions {
        match topics.last_mut() {
            Some((last, ps)) if *last == t.as_str() => ps.push(*p),
            _ => topics.push((t.as_str(), vec![*p])),
        }
    }
    out.extend_from_slice(&(topics.len() as i32).to_be_bytes());
    for (t, ps) in topics {
        put_str(&mut out, t);
        out.extend_from_slice(&(ps.len() as i32).to_be_bytes());
        for p in ps {
            out.extend_from_slice(&p.to_be_bytes());
        }
    }
    out.extend_from_slice(&m.last_update_ms.to_be_bytes());
    out.extend_from_slice(&m.start_ms.to_be_bytes());
    out
}

impl From<WireError> for RecordError {
    fn from(e: WireError) -> Self {
        RecordError(e.to_string())
    }
}

/// The transactional id of a key.
pub fn decode_key(key: &[u8]) -> Result<String, RecordError> {
    let mut r = Reader::new(key);
    let version = r.i16()?;
    if version != 0 {
        return Err(RecordError(format!("unknown key version {version}")));
    }
    Ok(r.string()?)
}

/// A transaction's metadata from a value (v0; the fixed fields of a v1 value are skipped).
pub fn decode_value(transactional_id: &str, value: &[u8]) -> Result<TxnMetadata, RecordError> {
    let mut r = Reader::new(value);
    let version = r.i16()?;
    if version != 0 {
        return Err(RecordError(format!("unsupported value version {version}")));
    }
    let producer_id = r.i64()?;
    let producer_epoch = r.i16()?;
    let timeout_ms = r.i32()?;
    let status = TxnStatus::from_i8(r.i8()?)
        .ok_or_else(|| RecordError("unknown transaction status".into()))?;
    let mut partitions = BTreeSet::new();
    for _ in 0..r.array_len(6)? {
        let topic = r.string()?;
        for _ in 0..r.array_len(4)? {
            partitions.insert((topic.clone(), r.i32()?));
        }
    }
    let last_update_ms = r.i64()?;
    let start_ms = r.i64()?;
    Ok(TxnMetadata {
        transactional_id: transactional_id.to_string(),
        producer_id,
        producer_epoch,
        timeout_ms,
        status,
        partitions,
        start_ms,
        last_update_ms,
    })
}

/// Control record key of a transaction marker.
pub fn marker_key(commit: bool) -> [u8; 4] {
    let t: i16 = if commit { 1 } else { 0 };
    let [a, b] = t.to_be_bytes();
    [0, 0, a, b]
}

/// Control record value of a transaction marker.
pub fn marker_value(coordinator_epoch: i32) -> [u8; 6] {
    let e = coordinator_epoch.to_be_bytes();
    [0, 0, e[0], e[1], e[2], e[3]]
}

/// The coordinator epoch in a marker's control record value (`None`: too short).
pub fn decode_marker_value(value: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(value.get(2..6)?.try_into().ok()?))
}

/// Whether a control record key is a COMMIT (`Some(true)`) or ABORT (`Some(false)`) marker.
pub fn decode_marker_key(key: &[u8]) -> Option<bool> {
    if key.len() < 4 {
        return None;
    }
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips() {
        let m = TxnMetadata {
            transactional_id: "tx".into(),
            producer_id: 42,
            producer_epoch: 3,
            timeout_ms: 60_000,
            status: TxnStatus::Ongoing,
            partitions: [
                ("a".to_string(), 0),
                ("a".to_string(), 2),
                ("b".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            start_ms: 5,
            last_update_ms: 7,
        };
        assert_eq!(decode_key(&txn_key("tx")).unwrap(), "tx");
        assert_eq!(decode_value("tx", &txn_value(&m)).unwrap(), m);
        assert!(decode_value("tx", &txn_value(&m)[..20]).is_err());
        assert_eq!(decode_marker_key(&marker_key(true)), Some(true));
        assert_eq!(decode_marker_key(&marker_key(false)), Some(false));
        assert_eq!(decode_marker_value(&marker_value(17)), Some(17));
        assert_eq!(decode_marker_value(&[0, 0, 1]), None);
    }

    #[test]
    fn hostile_counts_are_refused() {
        let mut v = txn_value(&TxnMetadata {
            transactional_id: "t".into(),
            producer_id: 1,
            producer_epoch: 0,
            timeout_ms: 1,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            start_ms: 0,
            last_update_ms: 0,
        });
        // partitions count sits after version(2)+pid(8)+epoch(2)+timeout(4)+status(1)
        v[17..21].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_value("t", &v).is_err());
    }
}
