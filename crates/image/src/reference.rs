//! Image names: `[registry/]repo[:tag][@digest]`, normalized the way users type them
//! (`busybox` → `busybox:latest`, `docker.io/library/busybox` → `busybox:latest`).

use crate::error::{Error, Result};

/// Normalizes a user-typed image name into the key used by the store's index.
pub fn normalize(name: &str) -> Result<String> {
    let bad = |reason: &str| Error::BadReference {
        reference: name.to_string(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(bad("empty name"));
    }
    if name.len() > 512 {
        return Err(bad("longer than 512 characters"));
    }
    // Names are printed raw by `strata images` and `load`: printable ASCII only (as in
    // Docker's grammar), so no escape sequence, 8-bit control or bidi override gets in.
    if name.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(bad("contains whitespace, control or non-ASCII characters"));
    }
    let mut n = name;
    for prefix in [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
    ] {
        if let Some(rest) = n.strip_prefix(prefix) {
            n = rest;
            break;
        }
    }
    if n.is_empty() || n.starts_with('/') || n.ends_with('/') || n.contains("//") {
        return Err(bad("empty path component"));
    }
    if n.contains('@') {
        return Ok(n.to_string());
    }
    let last = n.rsplit('/').next().unwrap_or(n);
    if last.contains(':') {
        if last.ends_with(':') {
            return Err(bad("empty tag"));
        }
        Ok(n.to_string())
    } else {
        Ok(format!("{n}:latest"))
    }
}

/// Splits a normalized name into repository and tag (or digest) for display.
pub fn split(name: &str) -> (&str, &str) {
    if let Some((repo, digest)) = name.split_once('@') {
        return (repo, digest);
    }
    let slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[slash..].rfind(':') {
        Some(i) => (&name[..slash + i], &name[slash + i + 1..]),
        None => (name, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(normalize("busybox").unwrap(), "busybox:latest");
        assert_eq!(
            normalize("docker.io/library/busybox:1.36").unwrap(),
            "busybox:1.36"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/x/y").unwrap(),
            "127.0.0.1:5000/x/y:latest"
        );
        assert_eq!(
            normalize("127.0.0.1:5000/x/y:v1").unwrap(),
            "127.0.0.1:5000/x/y:v1"
        );
        assert_eq!(split("127.0.0.1:5000/x/y:v1"), ("127.0.0.1:5000/x/y", "v1"));
        for bad in [
            "",
            "a b",
            "x:",
            "/x",
            "x//y",
            "a\n",
            "a\u{9b}1m",
            "x\u{202e}y",
            "\u{1b}[2J",
        ] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
    }
}
