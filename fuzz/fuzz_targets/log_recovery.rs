//! The on-disk recovery path: arbitrary bytes as a segment file, then open (which validates
//! and truncates), read everything back, append, and reopen. Must never panic, and whatever
//! survives recovery must be readable and consistent.
#![no_main]

use gregor_log::{LogConfig, PartitionLog};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: gregor_protocol::alloc_guard::GuardedAllocator =
    gregor_protocol::alloc_guard::GuardedAllocator;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("00000000000000000000.log"), data).expect("write segment");
    let Ok(log) = PartitionLog::open(dir.path(), LogConfig::default()) else {
        return;
    };
    let start = log.log_start_offset();
    let end = log.log_end_offset();
    assert!(start <= end);
    let mut offset = start;
    while offset < end {
        let read = log.read(offset, 1 << 20, end).expect("recovered data is readable");
        let mut next = offset;
        for item in gregor_log::batch::iter_batches(&read.data) {
            let (header, _) = item.expect("recovered batches are valid");
            next = header.last_offset() + 1;
        }
        assert!(next > offset, "read made no progress at {offset}");
        offset = next;
    }
    drop(log);
    let reopened = PartitionLog::open(dir.path(), LogConfig::default()).expect("reopen");
    assert_eq!(reopened.log_end_offset(), end);
});
