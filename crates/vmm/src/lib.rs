//! strata-vmm
