//! Fuzzes the OCI seccomp profile compiler (JSON → BPF): `cargo +nightly fuzz run seccomp_profile`
//! from crates/container. The same entry point runs over a hostile corpus in the stable
//! `seccomp::tests::hostile_profiles_never_panic` test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(filter) = strata_container::seccomp::compile_json(data) {
        // Whatever compiles must fit the kernel's limit (the kernel would refuse it otherwise).
        assert!(filter.len() <= 4096);
    }
});
