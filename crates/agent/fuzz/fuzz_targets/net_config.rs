//! Fuzzes the guest's network configuration parser (the `dev.strata.net.*` annotations of
//! create and the map of a start that takes a NIC over): `cargo +nightly fuzz run net_config`
//! (from crates/agent).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    strata_agent::net::fuzz_net_config(data);
});
