//! Fuzzes the `-p` parser: any string must parse into a valid mapping or fail with an error.
//!
//! Run: `cd crates/net/fuzz && cargo +nightly fuzz run publish -- -max_total_time=60`
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = strata_net::ports::PortSpec::parse(s) {
            assert!(p.container_port != 0);
            assert_eq!(strata_net::ports::PortSpec::parse(&p.to_string()).as_ref(), Ok(&p));
        }
    }
});
