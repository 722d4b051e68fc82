//! Encoding v2 record batches with `kafka-protocol`'s encoder: the batches the broker writes
//! itself (internal topics, transaction markers) and the ones tests produce.
//!
//! ```
//! use bytes::Bytes;
//! use gregor_protocol::batch_builder::BatchBuilder;
//!
//! let batch = BatchBuilder::new()
//!     .producer(7, 0)
//!     .base_sequence(0)
//!     .record(None, Some(Bytes::from_static(b"v")), 1_000)
//!     .record(None, Some(Bytes::from_static(b"w")), 1_000)
//!     .encode()
//!     .unwrap();
//! assert_eq!(&batch[57..61], &[0, 0, 0, 2]); // one batch of two records
//! ```

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The records of a batch and the batch-wide fields, encoded by [`BatchBuilder::encode`].
///
/// Record `i` gets offset `i`. Without [`base_sequence`](Self::base_sequence) every record
/// has sequence -1, and `kafka-protocol`'s encoder, which starts a new batch wherever
/// `offset - sequence` changes, then writes each record as a batch of its own; with one, record
/// `i` has sequence `base + i` and all records go in one batch.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: Option<i32>,
    transactional: bool,
    control: bool,
    partition_leader_epoch: i32,
    compression: Compression,
    headers: Vec<(StrBytes, Option<Bytes>)>,
    records: Vec<(Option<Bytes>, Option<Bytes>, i64)>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BatchBuilder {
    /// No records yet; no producer (id and epoch -1), no sequence, not transactional, not a
    /// control batch, partition leader epoch 0, uncompressed, no headers.
    pub fn new() -> Self {
        BatchBuilder {
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: None,
            transactional: false,
            control: false,
            partition_leader_epoch: 0,
            compression: Compression::None,
            headers: Vec::new(),
            records: Vec::new(),
        }
    }

    pub fn producer(mut self, id: i64, epoch: i16) -> Self {
        self.producer_id = id;
        self.producer_epoch = epoch;
        self
    }

    pub fn base_sequence(mut self, base: i32) -> Self {
        self.base_sequence = Some(base);
        self
    }

    pub fn transactional(mut self, transactional: bool) -> Self {
        self.transactional = transactional;
        self
    }

    /// A control batch (a transaction marker).
    pub fn control(mut self, control: bool) -> Self {
        self.control = control;
        self
    }

    pub fn partition_leader_epoch(mut self, epoch: i32) -> Self {
        self.partition_leader_epoch = epoch;
        self
    }

    pub fn compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// A header every record carries.
    pub fn header(mut self, name: &'static str, value: Option<&'static [u8]>) -> Self {
        self.headers.push((
            StrBytes::from_static_str(name),
            value.map(Bytes::from_static),
        ));
        self
    }

    /// One record more.
    pub fn record(mut self, key: Option<Bytes>, value: Option<Bytes>, timestamp: i64) -> Self {
        self.records.push((key, value, timestamp));
        self
    }

    /// `records` more.
    pub fn records(
        mut self,
        records: impl IntoIterator<Item = (Option<Bytes>, Option<Bytes>, i64)>,
    ) -> Self {
        self.records.extend(records);
        self
    }

    /// The records as v2 batches (one batch unless the note on [`BatchBuilder`] says otherwise).
    pub fn encode(self) -> anyhow::Result<Bytes> {
        let records: Vec<Record> = self
            .records
            .into_iter()
            .enumerate()
            .map(|(i, (key, value, timestamp))| Record {
                transactional: self.transactional,
                control: self.control,
                delete_horizon: false,
                partition_leader_epoch: self.partition_leader_epoch,
                producer_id: self.producer_id,
                producer_epoch: self.producer_epoch,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: self.base_sequence.map_or(-1, |base| base + i as i32),
                timestamp,
                key,
                value,
                headers: self.headers.iter().cloned().collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression: self.compression,
            },
        )?;
        Ok(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_count(builder: BatchBuilder) -> usize {
        let mut bytes = builder.encode().unwrap();
        kafka_protocol::records::RecordBatchDecoder::decode_all(&mut bytes)
            .unwrap()
            .len()
    }

    #[test]
    fn a_base_sequence_keeps_the_records_in_one_batch() {
        let two = |b: BatchBuilder| b.record(None, None, 1).record(None, None, 2);
        assert_eq!(batch_count(two(BatchBuilder::new().base_sequence(0))), 1);
        assert_eq!(batch_count(two(BatchBuilder::new())), 2);
    }
}
