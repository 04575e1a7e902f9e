//! Fuzzes what the runtime does with an untrusted config.json before it starts anything:
//! parse + validate (`spec::parse`), then compile its seccomp profile.
//! `cargo +nightly fuzz run config_json` from crates/container; the stable corpus test is
//! crates/cli/tests/harden_fuzz_corpus.rs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = strata_container::spec::parse(data) {
        if let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            let _ = strata_container::seccomp::compile(profile);
        }
    }
});
