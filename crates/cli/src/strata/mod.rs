//! The `strata` command modules; bin/strata.rs dispatches to them.

pub mod attach;
pub mod compare;
pub mod compare_chart;
pub mod compare_probes;
pub mod containers;
pub mod exec;
pub mod image;
pub mod instance;
pub mod lifecycle;
pub mod logs;
pub mod monitor;
pub mod output;
pub mod progress;
pub mod ps;
pub mod relay;
pub mod run;
pub mod tty;
pub mod vm;
pub mod vm_info;
pub mod vm_keeper;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Image and container store
    #[arg(long, global = true, env = "STRATA_STORE", default_value = strata_image::DEFAULT_ROOT)]
    pub store: PathBuf,
    /// No progress output
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Runtime state of running containers
    #[arg(long, global = true, env = "STRATA_ROOT", default_value = strata_container::DEFAULT_ROOT)]
    pub root: PathBuf,
}

impl Global {
    /// Opens the image store.
    pub fn image_store(&self) -> anyhow::Result<strata_image::Store> {
        Ok(strata_image::Store::open(&self.store)?)
    }
}

/// Process set-up every command needs: default SIGPIPE (so `strata images | head` ends quietly,
/// like other Unix tools) and logging.
pub fn init() {
    // SAFETY: setting a signal disposition to SIG_DFL at start-up, before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    init_logging();
}

/// Logs go to stderr, filtered by STRATA_LOG (default: warnings).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
}

/// CVE-2019-5736 for the user CLI: re-executes this process from a detached read-only mount
/// of its binary (`exe_guard`; no mount namespace, so the overlay mounts `strata` makes stay
/// visible on the host), or from a sealed memfd copy where that is not possible or
/// `STRATA_EXE_PROTECTION=memfd` asks for it. Returns in the protected process.
pub fn protect_binary() -> anyhow::Result<()> {
    if strata_container::exe_guard::is_protected() {
        return Ok(());
    }
    // Each of these commands moves a container's init into cgroups a few milliseconds from
    // now: start the kernel's grace period for that already (cgroups/prewarm.rs).
    strata_container::cgroups::prewarm::start();
    // The re-executed image has no directory of its own (/proc/self/exe no longer names the
    // install path): find the guest agent beside the real binary now.
    if std::env::var_os("STRATA_AGENT").is_none() {
        if let Ok(agent) = vm_keeper::agent_path() {
            std::env::set_var("STRATA_AGENT", agent);
        }
    }
    if std::env::var_os("STRATA_EXE_PROTECTION").is_some_and(|v| v == "memfd") {
        strata_container::exe_clone::ensure_cloned_binary()?;
    } else {
        strata_container::exe_guard::protect_binary(strata_container::exe_guard::Fallback::Memfd)?;
    }
    Ok(())
}

/// Prints an error the way every strata command does and picks the exit code.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
