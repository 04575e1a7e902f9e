//! Named kill points for the fault tests (issue 14): with the `kill-points` cargo feature (test
//! builds only; off by default and in every release build), a process whose environment has
//! `STRATA_KILL_POINT=<name>` SIGKILLs itself when it reaches the point of that name, so a test
//! can stop `strata-oci create`, `strata run`, the monitor or the VM keeper between two of
//! their steps and check that `delete --force` / `rm -f` leave nothing behind. Without the
//! feature [`hit`] is an empty inline function and the environment is never read.
//!
//! The names (crates/cli/tests/faults.rs lists them too): `create:*` in
//! strata-container's create (strata-oci create/run and every container `strata run` starts),
//! `prepare:*`, `run:*`, `monitor:*`, `keeper:*`, `net:pool-filling` (the network pool filler,
//! between a slot's namespace and its ADD), `net:releasing` (the detached network
//! releaser, crates/cli/tests/cli_network.rs) and `pool:teardown` (a warm VM's pool keeper at
//! the start of its detached teardown, crates/cli/tests/vm_pool.rs) in strata-engine.

/// The environment variable naming the point to die at.
pub const ENV: &str = "STRATA_KILL_POINT";

/// The environment variable naming the point to stop at (SIGSTOP: the test continues the
/// process with SIGCONT), to hold a process between two steps and look at what others see.
pub const STOP_ENV: &str = "STRATA_STOP_POINT";

/// Dies by SIGKILL here when this is the named kill point, or stops (SIGSTOP) when it is the
/// named stop point (test builds only).
#[inline]
pub fn hit(name: &str) {
    #[cfg(feature = "kill-points")]
    {
        if std::env::var_os(ENV).is_some_and(|v| v == name) {
            // SAFETY: kill(2) of our own process; SIGKILL cannot be caught: this does not return.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
        if std::env::var_os(STOP_ENV).is_some_and(|v| v == name) {
            // SAFETY: kill(2) of our own process; returns once someone sends SIGCONT.
            unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
        }
    }
    #[cfg(not(feature = "kill-points"))]
    let _ = name;
}

/// The environment variable naming a step to fail on purpose (test builds only): the step then
/// does what it would do with bad input, e.g. hands QEMU a file it cannot open, so a test can
/// see the real error path (`qemu:hot-add`, the warm qemu hand-over, crates/cli/tests/vm_pool.rs).
pub const FAIL_ENV: &str = "STRATA_FAIL_POINT";

/// Whether the step of this name is to fail (test builds only; always false otherwise).
#[inline]
pub fn fails(name: &str) -> bool {
    #[cfg(feature = "kill-points")]
    {
        std::env::var_os(FAIL_ENV).is_some_and(|v| v == name)
    }
    #[cfg(not(feature = "kill-points"))]
    {
        let _ = name;
        false
    }
}
