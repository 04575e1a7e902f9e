//! The user's container options as OCI pieces, validated before anything is made: `-v` and
//! `--tmpfs` as mounts, `-e`/`--env-file` as the environment, sizes, and `--memory`/`--cpus`/
//! `--pids-limit` as linux.resources. Errors say which flag is wrong and how to fix it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// `-v` and `--tmpfs` as OCI mounts.
pub fn mounts(
    volumes: &[String],
    tmpfs: &[String],
) -> anyhow::Result<Vec<oci_spec::runtime::Mount>> {
    let mut out = Vec::new();
    for v in volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let (host, ctr, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, "rw"),
            [h, c, m] => (*h, *c, *m),
            _ => bail!("bad -v {v:?}: expected HOST:CONTAINER[:ro|rw], both absolute paths"),
        };
        if !host.starts_with('/') || !ctr.starts_with('/') {
            bail!("bad -v {v:?}: HOST and CONTAINER must be absolute paths (named volumes are not supported)");
        }
        if ctr == "/" || ctr.split('/').any(|c| c == "..") {
            bail!("bad -v {v:?}: the container path must be below / and not contain '..'");
        }
        if !matches!(mode, "ro" | "rw") {
            bail!("bad -v {v:?}: the mode must be ro or rw");
        }
        if !Path::new(host).exists() {
            bail!("bad -v {v:?}: the host path {host} does not exist; create it first");
        }
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        if mode == "ro" {
            options.push("ro".into());
        }
        out.push(serde_json::from_value(serde_json::json!({
            "destination": ctr, "type": "bind", "source": host, "options": options,
        }))?);
    }
    for t in tmpfs {
        let (path, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
        if !path.starts_with('/') || path == "/" || path.split('/').any(|c| c == "..") {
            bail!("bad --tmpfs {t:?}: expected an absolute path below / (PATH[:OPTIONS])");
        }
        let mut options: Vec<String> = vec!["nosuid".into(), "nodev".into(), "noexec".into()];
        options.extend(opts.split(',').filter(|o| !o.is_empty()).map(String::from));
        out.push(serde_json::from_value(serde_json::json!({
            "destination": path, "type": "tmpfs", "source": "tmpfs", "options": options,
        }))?);
    }
    Ok(out)
}

/// `-e` and `--env-file` entries, `K` alone resolved from our own environment.
pub fn environment(env: &[String], files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut add = |e: &str, origin: &str| -> anyhow::Result<()> {
        let e = e.trim_end_matches('\r');
        match e.split_once('=') {
            Some(("", _)) => bail!("bad environment entry {e:?} in {origin}: the name is empty"),
            Some(_) => out.push(e.to_string()),
            None if e.is_empty() => {}
            None => {
                if let Ok(v) = std::env::var(e) {
                    out.push(format!("{e}={v}"));
                }
            }
        }
        Ok(())
    };
    for f in files {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("read --env-file {}", f.display()))?;
        for line in text.lines() {
            let l = line.trim_start();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            add(l, &f.display().to_string())?;
        }
    }
    for e in env {
        add(e, "-e")?;
    }
    Ok(out)
}

/// Parses a size with an optional b/k/m/g suffix (powers of 1024, like docker).
pub fn parse_size(s: &str) -> anyhow::Result<i64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    let n: i64 = num.parse().ok().filter(|n| *n > 0).with_context(|| {
        format!("bad size {s:?}: expected a positive number with an optional k, m or g suffix")
    })?;
    n.checked_mul(mul)
        .with_context(|| format!("bad size {s:?}: too large"))
}

/// `--memory`, `--cpus`, `--pids-limit` as linux.resources.
pub fn resources(
    memory: Option<&str>,
    cpus: Option<f64>,
    pids: Option<i64>,
) -> anyhow::Result<Option<oci_spec::runtime::LinuxResources>> {
    let mut r = serde_json::Map::new();
    if let Some(m) = memory {
        let bytes = parse_size(m).context("--memory")?;
        if bytes < 6 << 20 {
            bail!("--memory {m}: the minimum is 6m");
        }
        r.insert("memory".into(), serde_json::json!({ "limit": bytes }));
    }
    if let Some(c) = cpus {
        if !(c > 0.0 && c <= 1024.0) {
            bail!("--cpus {c}: expected a positive number of CPUs such as 0.5 or 2");
        }
        let period = 100_000u64;
        r.insert(
            "cpu".into(),
            serde_json::json!({ "quota": (c * period as f64).round() as i64, "period": period }),
        );
    }
    if let Some(p) = pids {
        if p == 0 || p < -1 {
            bail!("--pids-limit {p}: expected a positive number (or -1 for no limit)");
        }
        r.insert("pids".into(), serde_json::json!({ "limit": p }));
    }
    if r.is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_value(serde_json::Value::Object(r))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_specs_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let h = t.path().display().to_string();
        assert_eq!(mounts(&[format!("{h}:/data:ro")], &[]).unwrap().len(), 1);
        for bad in [
            "rel:/data".to_string(),
            format!("{h}:data"),
            format!("{h}:/data:rx"),
            format!("{h}:/"),
            format!("{h}:/a/../b"),
            "/does/not/exist:/x".to_string(),
            "/a:/b:ro:x".to_string(),
            "justone".to_string(),
        ] {
            let e = mounts(std::slice::from_ref(&bad), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains("bad -v"), "{bad}: {e}");
        }
        assert!(mounts(&[], &["tmp".into()]).is_err());
        let m = mounts(&[], &["/run:size=1m".into()]).unwrap();
        assert!(m[0]
            .options()
            .as_ref()
            .unwrap()
            .contains(&"size=1m".to_string()));
    }

    #[test]
    fn sizes_and_limits() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        for bad in ["", "m", "-1m", "1x", "99999999999999g"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let r = resources(Some("64m"), Some(0.5), Some(20))
            .unwrap()
            .unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cpu"]["quota"], 50000);
        assert_eq!(v["pids"]["limit"], 20);
        assert!(resources(Some("1k"), None, None).is_err());
        assert!(resources(None, Some(0.0), None).is_err());
        assert!(resources(None, None, None).unwrap().is_none());
    }

    #[test]
    fn env_files_and_inherited_names() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("env");
        std::fs::write(&f, "# comment\n\nA=1\r\nB=two words\nPATH\n").unwrap();
        let e = environment(&["C=3".into()], &[f]).unwrap();
        assert_eq!(e[0], "A=1");
        assert_eq!(e[1], "B=two words");
        assert!(e[2].starts_with("PATH="));
        assert_eq!(e[3], "C=3");
        assert!(environment(&["=x".into()], &[]).is_err());
    }
}
