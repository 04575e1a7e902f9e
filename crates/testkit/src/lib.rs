//! Test-only helpers shared by the test suites of strata's crates (a dev-dependency of each,
//! never part of a shipped binary).
//!
//! - [`skip_or_fail`] and [`require`]: how a test that cannot run here says so. With
//!   `STRATA_REQUIRE_E2E=1` (set by scripts/test.sh, so on CI) a missing precondition fails the
//!   test; otherwise the test prints `SKIPPED: <test>: <reason>` and passes, and scripts/test.sh
//!   counts those lines.
//! - [`guest_kernel`]: strata's own UML guest kernel, built (once, cached) by
//!   scripts/build-guest-kernel.sh; [`static_agent`]: the static guest agent of
//!   scripts/build-agent.sh.

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The prefix of a skip in the test output (scripts/test.sh counts these lines).
pub const SKIPPED: &str = "SKIPPED: ";
/// The prefix of the panic of a skip that `STRATA_REQUIRE_E2E=1` turned into a failure.
pub const REQUIRED: &str = "REQUIRED BUT SKIPPED: ";

/// Whether every test must run: `STRATA_REQUIRE_E2E=1` (scripts/test.sh and CI set it).
pub fn e2e_required() -> bool {
    std::env::var_os("STRATA_REQUIRE_E2E").is_some_and(|v| v == "1")
}

/// This test, or one of its checks, cannot run here because of `reason` (say what is missing
/// and how to get it). Panics when [`e2e_required`]; otherwise prints one line
/// `SKIPPED: <test>: <reason>` on the process's stderr, past the test harness's output capture,
/// so that the summary of scripts/test.sh sees it, and returns (the caller returns or leaves the
/// check out).
#[track_caller]
pub fn skip_or_fail(reason: impl Display) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    if e2e_required() {
        panic!("{REQUIRED}{test}: {reason} (STRATA_REQUIRE_E2E=1: a test that cannot run fails)");
    }
    // One write of a whole line (the harness prints test results concurrently on stdout).
    let line = format!("\n{SKIPPED}{test}: {reason}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `cond`; when false, [`skip_or_fail`] with `reason` first. For `if !require(..) { return; }`.
#[track_caller]
pub fn require(cond: bool, reason: impl Display) -> bool {
    if !cond {
        skip_or_fail(reason);
    }
    cond
}

/// Whether the test runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The preconditions of the end-to-end tests: root (namespaces, cgroups, mounts) and the static
/// busybox their bundles and images are made of. False (after [`skip_or_fail`]) when missing.
#[track_caller]
pub fn root_and_busybox() -> bool {
    require(
        is_root() && Path::new("/bin/busybox").exists(),
        "needs root and /bin/busybox (busybox-static: scripts/deps.sh)",
    )
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// strata's own UML guest kernel, built from this tree's guest/uml.config by
/// scripts/build-guest-kernel.sh (cached: only the first call on a machine builds it, ≈ 10 min).
pub fn guest_kernel() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/build-guest-kernel.sh"))
        .output()
        .expect("run scripts/build-guest-kernel.sh");
    assert!(
        out.status.success(),
        "build-guest-kernel.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// The static strata-agent of this tree (PID 1 of strata's guests), built by
/// scripts/build-agent.sh into `target_tmpdir`/agent-build: a target directory of its own, as a
/// nested cargo must not wait on the lock of the cargo running the tests. Give the test's
/// `env!("CARGO_TARGET_TMPDIR")` (one for the workspace, so it is built once for all crates).
pub fn static_agent(target_tmpdir: &Path) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join("scripts/build-agent.sh"))
        .env("CARGO_TARGET_DIR", target_tmpdir.join("agent-build"))
        .output()
        .expect("run scripts/build-agent.sh");
    assert!(
        out.status.success(),
        "build-agent.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
