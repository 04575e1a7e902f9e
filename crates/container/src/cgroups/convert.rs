//! The value conversions runc applies between the OCI (v1-flavoured) resource
//! values and cgroup v2 files.

use super::CgroupError;

/// cpu.shares (2..262144) → cpu.weight (1..10000), runc's linear mapping
/// (`ConvertCPUSharesToCgroupV2Value`); 0 means unset.
pub(crate) fn cpu_shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// blkio weight (10..1000) → io.weight (1..10000), runc's `ConvertBlkIOToIOWeightValue`; 0 means unset.
pub(crate) fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    if weight == 0 {
        return 0;
    }
    1 + (u64::from(weight.max(10)) - 10) * 9999 / 990
}

/// OCI memory.swap is memory+swap; v2 memory.swap.max is swap alone. runc's
/// `ConvertMemorySwapToCgroupV2Value`: returns the value for memory.swap.max, with
/// 0 meaning "unset" and -1 meaning "max".
pub(crate) fn memory_swap_to_v2(swap: i64, memory: i64) -> Result<i64, CgroupError> {
    // Memory unlimited and swap unset: treat as "both unlimited", like cgroup v1.
    if memory == -1 && swap == 0 {
        return Ok(-1);
    }
    if swap == -1 || swap == 0 {
        return Ok(swap);
    }
    let invalid = |reason: &str| CgroupError::InvalidResource {
        resource: "memory.swap",
        reason: reason.to_owned(),
    };
    if memory == 0 || memory == -1 {
        return Err(invalid(
            "a swap limit needs a memory limit (memory.limit) too",
        ));
    }
    if memory < 0 {
        return Err(invalid(&format!("memory limit {memory} is negative")));
    }
    if swap < memory {
        return Err(invalid(&format!(
            "memory+swap limit {swap} is lower than the memory limit {memory}; swap is memory plus swap, so it must be >= memory"
        )));
    }
    Ok(swap - memory)
}

/// runc's `numToStr` for v2 files: 0 → not written, -1 (any negative) → "max".
pub(crate) fn v2_limit(value: i64) -> Option<String> {
    match value {
        0 => None,
        v if v < 0 => Some("max".to_owned()),
        v => Some(v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_to_weight_matches_runc() {
        assert_eq!(cpu_shares_to_weight(0), 0);
        assert_eq!(cpu_shares_to_weight(2), 1);
        assert_eq!(cpu_shares_to_weight(1024), 39);
        assert_eq!(cpu_shares_to_weight(512), 20);
        assert_eq!(cpu_shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn blkio_to_io_weight_matches_runc() {
        assert_eq!(blkio_weight_to_io_weight(0), 0);
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(500), 4950);
        assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
    }

    #[test]
    fn swap_conversion_matches_runc() {
        assert_eq!(memory_swap_to_v2(0, -1).unwrap(), -1);
        assert_eq!(memory_swap_to_v2(0, 100).unwrap(), 0);
        assert_eq!(memory_swap_to_v2(-1, 100).unwrap(), -1);
        assert_eq!(memory_swap_to_v2(300, 100).unwrap(), 200);
        assert_eq!(memory_swap_to_v2(100, 100).unwrap(), 0);
        assert!(memory_swap_to_v2(50, 100).is_err());
        assert!(memory_swap_to_v2(50, 0).is_err());
        assert!(memory_swap_to_v2(50, -1).is_err());
    }

    #[test]
    fn v2_limit_strings() {
        assert_eq!(v2_limit(0), None);
        assert_eq!(v2_limit(-1).as_deref(), Some("max"));
        assert_eq!(v2_limit(4096).as_deref(), Some("4096"));
    }
}
