//! Container ids, validated like runc's (`^[\w+-\.]+$`, not `.` or `..`), with a length cap
//! so an id can always name a directory and a cgroup.

/// Longest id accepted (runc has no cap; 1 KiB ids break path limits, so strata refuses them).
pub const MAX_ID_LEN: usize = 255;

/// The id is unusable; the message is runc's.
#[derive(Debug, thiserror::Error)]
#[error("invalid id format: {id:?}")]
pub struct InvalidId {
    pub id: String,
}

/// Checks a container id.
pub fn validate(id: &str) -> Result<(), InvalidId> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidId {
            id: id.chars().take(64).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn ids() {
        for good in ["a", "abc-1_2.3+x", "0123456789abcdef", "..."] {
            validate(good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            "é",
            "x\0",
            &"a".repeat(1024),
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
