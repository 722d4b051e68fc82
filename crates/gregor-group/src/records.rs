//! Kafka's on-disk schemas for `__consumer_offsets` records.
//!
//! `kafka-protocol` 0.18 does not ship the internal `OffsetCommitKey`/`OffsetCommitValue`/
//! `GroupMetadataKey`/`GroupMetadataValue` messages, so this module encodes that small schema
//! itself, byte-compatible with Kafka (`group-coordinator/src/main/resources/common/message/`):
//!
//! | record | key (version) | value (version written) |
//! |---|---|---|
//! | committed offset | `1`: group, topic, partition | `3`: offset, leader epoch, metadata, commit timestamp |
//! | group metadata | `2`: group | `3`: protocol type, generation, protocol, leader, state timestamp, members |
//!
//! A record with a null value is a tombstone (offset deleted or expired, group deleted).
//! Decoding accepts offset values v0–v3 and group values v0–v3 and never panics: every length
//! is checked against the bytes that remain.

use bytes::{BufMut, Bytes, BytesMut};
use gregor_wire::{Reader, WireError};

/// A decoded `__consumer_offsets` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

impl RecordKey {
    pub fn group(&self) -> &str {
        match self {
            RecordKey::Offset { group, .. } | RecordKey::Group { group } => group,
        }
    }
}

/// A committed offset as stored (`OffsetCommitValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp: i64,
}

/// One member in a stored `GroupMetadataValue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

/// A group's stored metadata (`GroupMetadataValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp: i64,
    pub members: Vec<MemberValue>,
}

/// A record that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed __consumer_offsets record: {0}")]
pub struct RecordError(pub String);

fn put_str(buf: &mut BytesMut, s: &str) {
    // Strings longer than i16::MAX cannot be represented; callers validate lengths first,
    // and truncation here keeps the record decodable rather than corrupt.
    let b = s.as_bytes();
    let len = b.len().min(i16::MAX as usize);
    buf.put_i16(len as i16);
    buf.put_slice(&b[..len]);
}

fn put_nullable_str(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_str(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> Bytes {
    let mut buf = BytesMut::with_capacity(8 + group.len() + topic.len());
    buf.put_i16(1);
    put_str(&mut buf, group);
    put_str(&mut buf, topic);
    buf.put_i32(partition);
    buf.freeze()
}

pub fn group_key(group: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(4 + group.len());
    buf.put_i16(2);
    put_str(&mut buf, group);
    buf.freeze()
}

pub fn offset_value(v: &OffsetValue) -> Bytes {
    let mut buf = BytesMut::with_capacity(26 + v.metadata.len());
    buf.put_i16(3);
    buf.put_i64(v.offset);
    buf.put_i32(v.leader_epoch);
    put_str(&mut buf, &v.metadata);
    buf.put_i64(v.commit_timestamp);
    buf.freeze()
}

pub fn group_value(v: &GroupValue) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_i16(3);
    put_str(&mut buf, &v.protocol_type);
    buf.put_i32(v.generation);
    put_nullable_str(&mut buf, v.protocol.as_deref());
    put_nullable_str(&mut buf, v.leader.as_deref());
    buf.put_i64(v.current_state_timestamp);
    buf.put_i32(v.members.len() as i32);
    for m in &v.members {
        put_str(&mut buf, &m.member_id);
        put_nullable_str(&mut buf, m.group_instance_id.as_deref());
        put_str(&mut buf, &m.client_id);
        put_str(&mut buf, &m.client_host);
        buf.put_i32(m.rebalance_timeout_ms);
        buf.put_i32(m.session_timeout_ms);
        put_bytes(&mut buf, &m.subscription);
        put_bytes(&mut buf, &m.assignment);
    }
    buf.freeze()
}

impl From<WireError> for RecordError {
    fn from(e: WireError) -> Self {
        RecordError(e.to_string())
    }
}

/// A `BYTES` field (`i32` length; null read as empty).
fn bytes_field(r: &mut Reader) -> Result<Bytes, RecordError> {
    Ok(Bytes::copy_from_slice(r.i32_bytes()?.unwrap_or_default()))
}

pub fn decode_key(key: &[u8]) -> Result<RecordKey, RecordError> {
    let mut r = Reader::new(key);
    match r.i16()? {
        0 | 1 => Ok(RecordKey::Offset {
            group: r.string()?,
            topic: r.string()?,
            partition: r.i32()?,
        }),
        2 => Ok(RecordKey::Group { group: r.string()? }),
        v => Err(RecordError(format!("unknown key version {v}"))),
    }
}

pub fn decode_offset_value(value: &[u8]) -> Result<OffsetValue, RecordError> {
    let mut r = Reader::new(value);
    let version = r.i16()?;
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_timestamp = r.i64()?;
    if !(0..=4).contains(&version) {
        return Err(RecordError(format!(
            "unknown offset value version {version}"
        )));
    }
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp,
    })
}

pub fn decode_group_value(value: &[u8]) -> Result<GroupValue, RecordError> {
    let mut r = Reader::new(value);
    let version = r.i16()?;
    if !(0..=4).contains(&version) {
        return Err(RecordError(format!(
            "unknown group value version {version}"
        )));
    }
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp = if version >= 2 { r.i64()? } else { -1 };
    // Each member takes at least 20 bytes, so a hostile count is refused before allocating.
    let count = r.array_len(20)?;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 {
            r.nullable_string()?
        } else {
            None
        };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let rebalance_timeout_ms = if version >= 1 { r.i32()? } else { -1 };
        let session_timeout_ms = r.i32()?;
        let subscription = bytes_field(&mut r)?;
        let assignment = bytes_field(&mut r)?;
        members.push(MemberValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription,
            assignment,
        });
    }
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_records_round_trip_with_kafka_layout() {
        let k = offset_key("g", "t", 3);
        // version 1, "g", "t", partition 3
        assert_eq!(&k[..], &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 3]);
        assert_eq!(
            decode_key(&k).unwrap(),
            RecordKey::Offset {
                group: "g".into(),
                topic: "t".into(),
                partition: 3
            }
        );
        let v = OffsetValue {
            offset: 4259,
            leader_epoch: 7,
            metadata: "m".into(),
            commit_timestamp: 1_700_000_000_000,
        };
        assert_eq!(decode_offset_value(&offset_value(&v)).unwrap(), v);
    }

    #[test]
    fn group_records_round_trip() {
        assert_eq!(
            decode_key(&group_key("g")).unwrap(),
            RecordKey::Group { group: "g".into() }
        );
        let v = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp: 9,
            members: vec![MemberValue {
                member_id: "m1".into(),
                group_instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 45_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        assert_eq!(decode_group_value(&group_value(&v)).unwrap(), v);
    }

    #[test]
    fn truncated_and_garbage_records_are_errors_not_panics() {
        let v = group_value(&GroupValue {
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: None,
            leader: None,
            current_state_timestamp: 0,
            members: vec![],
        });
        for cut in 0..v.len() {
            assert!(decode_group_value(&v[..cut]).is_err());
        }
        let hostile = [
            0u8, 3, 0, 0, 0, 0, 0, 1, 255, 255, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0xff, 0xff,
            0xff,
        ];
        assert!(decode_group_value(&hostile).is_err());
        assert!(decode_key(&[0, 9]).is_err());
        assert!(decode_offset_value(&[0, 3, 1]).is_err());
    }
}
