//! Mount options of config.json `mounts` entries, turned into mount(2) flags and data.

use nix::mount::MsFlags;

/// A parsed mount entry's options.
#[derive(Debug, Clone, PartialEq)]
pub struct MountOptions {
    /// Flags for the mount(2) call itself.
    pub flags: MsFlags,
    /// Propagation flags, applied by a separate mount(2) call after the mount.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific data (e.g. tmpfs `size=`, `mode=`).
    pub data: String,
    /// Whether the mount is a bind mount (`bind` or `rbind`).
    pub bind: bool,
    /// Whether a read-only remount is needed (bind mounts ignore MS_RDONLY on the first call).
    pub readonly: bool,
}

/// The mount(2) flag for a propagation mode name (`rslave`...).
pub fn propagation_flag(name: &str) -> Option<MsFlags> {
    Some(match name {
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Parses a mount entry's options like runc does: known flags set or clear bits, propagation
/// modes are collected, anything else goes to the filesystem as data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: String::new(),
        bind: false,
        readonly: false,
    };
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => {
                out.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                out.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            other => {
                if let Some(p) = propagation_flag(other) {
                    out.propagation.push(p);
                } else if !matches!(other, "tmpcopyup" | "rro" | "rrw" | "idmap" | "ridmap") {
                    // Unknown words are filesystem options (size=, mode=, newinstance...).
                    data.push(other);
                }
                continue;
            }
        };
        out.flags.insert(set);
        out.flags.remove(clear);
    }
    out.readonly = out.flags.contains(MsFlags::MS_RDONLY);
    out.data = data.join(",");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(o: &[&str]) -> MountOptions {
        parse_options(&o.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_data_and_propagation() {
        let m = p(&["nosuid", "strictatime", "mode=755", "size=65536k"]);
        assert_eq!(m.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(m.data, "mode=755,size=65536k");
        let m = p(&["rbind", "ro", "rprivate"]);
        assert!(m.bind && m.readonly);
        assert_eq!(m.propagation, vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]);
        let m = p(&["ro", "rw", "nodev", "dev"]);
        assert!(m.flags.is_empty() && !m.readonly);
        assert_eq!(propagation_flag("bogus"), None);
    }
}
