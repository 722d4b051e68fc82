//! Produced record batches: header/CRC validation, then bounded decompression and the record
//! walk. The CRC is fixed up half of the time so the fuzzer reaches the record layer.
#![no_main]

use gregor_log::batch::iter_batches;
use gregor_protocol::records::validate_batch_records;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: gregor_protocol::alloc_guard::GuardedAllocator =
    gregor_protocol::alloc_guard::GuardedAllocator;

fuzz_target!(|data: &[u8]| {
    let mut data = data.to_vec();
    if data.len() >= 61 && data[0] & 1 == 1 {
        let crc = crc32c(&data[21..]);
        data[17..21].copy_from_slice(&crc.to_be_bytes());
    }
    for (_, range) in iter_batches(&data).flatten() {
        let _ = validate_batch_records(&data[range], 1 << 20);
    }
});

fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}
