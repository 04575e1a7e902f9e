//! The kernel-file ELF header parser on arbitrary bytes: it must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = strata_vmm::kernel::elf_is_dynamic(data);
});
