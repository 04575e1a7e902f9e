//! Fuzzes the strata-proto frame decoder: `cargo +nightly fuzz run decode` (from crates/proto).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    strata_proto::fuzz_decode(data);
});
