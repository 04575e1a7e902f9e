//! Fuzzes the layer unpacker: any bytes (plain, gzip or zstd tar) must either unpack inside the
//! layer root or fail with an error; `fuzz_unpack` panics if anything lands outside.
//!
//! Run: `cd crates/image/fuzz && cargo +nightly fuzz run unpack -- -max_total_time=60`
//! The stable `unpack::tests::fuzz_corpus_stays_confined` test runs the same entry point.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = strata_image::unpack::fuzz_unpack(data);
});
