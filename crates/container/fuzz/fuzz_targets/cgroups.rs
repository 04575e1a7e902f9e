//! Fuzzes every cgroups parser that sees outside input (`cgroupsPath`, the LinuxResources JSON
//! of `update` and its device rules compiled to eBPF, the /proc mount and cgroup tables)
//! through `strata_container::cgroups::fuzz_one`, which also asserts that no cgroup path
//! escapes the hierarchy. `cargo +nightly fuzz run cgroups` from crates/container; the stable
//! corpus test is `cgroups::fuzz::tests::hostile_corpus`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    strata_container::cgroups::fuzz_one(data);
});
