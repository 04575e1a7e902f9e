//! The test image, built offline: Debian's busybox-static → a rootfs directory → an OCI layout
//! (umoci) → a docker-archive (skopeo) that `ctr images import`, `docker load` and `podman load` all read.

use super::command::run;
use super::sandbox::Sandbox;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The name every engine knows the image by after loading it.
pub const IMAGE_REF: &str = "localhost/strata-busybox:e2e";

/// The built image: the docker-archive and the rootfs it was made from.
pub struct BusyboxImage {
    pub archive: PathBuf,
    pub rootfs: PathBuf,
}

/// Builds the busybox image inside the sandbox (≈0.2 s).
pub fn build(sb: &Sandbox) -> BusyboxImage {
    let work = sb.path("image");
    let rootfs = work.join("rootfs");
    for d in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        fs::create_dir_all(rootfs.join(d)).expect("create rootfs dirs");
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copy /bin/busybox (install busybox-static: scripts/deps.sh)");
    let list = run(
        Command::new("/bin/busybox").arg("--list"),
        Duration::from_secs(10),
    )
    .ok()
    .expect("busybox --list");
    for applet in list
        .stdout
        .lines()
        .filter(|a| !a.is_empty() && *a != "busybox")
    {
        symlink("busybox", rootfs.join("bin").join(applet)).expect("symlink applet");
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();

    let layout = work.join("layout");
    let image = format!("{}:e2e", layout.display());
    let archive = work.join("busybox.tar");
    let steps: Vec<Vec<String>> = vec![
        vec![
            "umoci".into(),
            "init".into(),
            "--layout".into(),
            layout.display().to_string(),
        ],
        vec![
            "umoci".into(),
            "new".into(),
            "--image".into(),
            image.clone(),
        ],
        vec![
            "umoci".into(),
            "insert".into(),
            "--image".into(),
            image.clone(),
            rootfs.display().to_string(),
            "/".into(),
        ],
        vec![
            "umoci".into(),
            "config".into(),
            "--image".into(),
            image.clone(),
            "--config.cmd".into(),
            "sh".into(),
            "--config.env".into(),
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ],
        vec![
            "skopeo".into(),
            "copy".into(),
            "-q".into(),
            format!("oci:{image}"),
            format!("docker-archive:{}:{IMAGE_REF}", archive.display()),
        ],
    ];
    for step in steps {
        let mut c = Command::new(&step[0]);
        c.args(&step[1..]);
        if let Err(e) = run(&mut c, Duration::from_secs(60)).ok() {
            panic!("building the busybox image failed: {e}");
        }
    }
    BusyboxImage { archive, rootfs }
}
