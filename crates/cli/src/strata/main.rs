//! `strata`: the user command line. main() only parses arguments and dispatches to the command
//! modules beside it, which call strata-engine and render what it returns.

mod attach;
mod compare;
mod compare_chart;
mod compare_probes;
mod compare_report;
mod exec;
mod global_args;
mod image;
mod lifecycle;
mod logs;
mod network;
mod output;
mod progress;
mod ps;
mod run;
mod vm_info;
mod vm_pool;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use global_args::Global;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Run OCI images as containers or microVMs"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List images
    Images(image::ImagesArgs),
    /// Remove images (their blobs and layers go with `strata image prune`)
    Rmi(image::RmiArgs),
    /// Show an image's manifest, config and layer directories (JSON)
    Inspect(image::InspectArgs),
    /// Load images from an oci-archive, docker-archive or OCI layout directory
    Load(image::LoadArgs),
    /// Import a plain rootfs tarball as a one-layer image
    Import(image::ImportArgs),
    /// Pull an image from a registry
    Pull(image::PullArgs),
    /// Store credentials for a registry (checked with it first; kept 0600 in the store)
    Login(image::LoginArgs),
    /// Forget the stored credentials of a registry
    Logout(image::LogoutArgs),
    /// Manage images
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Run a command in a new container
    Run(run::RunArgs),
    /// Create a container without starting it
    Create(run::CreateArgs),
    /// Start created or stopped containers (detached)
    Start(lifecycle::StartArgs),
    /// Stop containers: SIGTERM, then SIGKILL after --time
    Stop(lifecycle::StopArgs),
    /// Send a signal to containers
    Kill(lifecycle::KillArgs),
    /// Stop and start containers
    Restart(lifecycle::StopArgs),
    /// Remove containers
    Rm(lifecycle::RmArgs),
    /// List containers
    Ps(ps::PsArgs),
    /// Manage networks
    #[command(subcommand)]
    Network(network::NetworkCommand),
    /// List a container's published ports
    Port(network::PortArgs),
    /// Run a command in a running container
    Exec(exec::ExecArgs),
    /// Show a container's output
    Logs(logs::LogsArgs),
    /// Connect to a detached container's stdin, stdout and stderr
    Attach(attach::AttachArgs),
    /// Wait for containers to exit and print their exit codes
    Wait(lifecycle::WaitArgs),
    /// Show the processes of a container
    Top(ps::TopArgs),
    /// Show resource usage of containers
    Stats(ps::StatsArgs),
    /// Guest kernels of the VM platforms
    #[command(subcommand)]
    Kernel(vm_info::KernelCommand),
    /// VMs: the warm pool of pre-booted VMs (`strata vm pool`)
    #[command(subcommand)]
    Vm(vm_pool::VmCommand),
    /// What this host supports: containers (cgroup layout) and VM platforms, and why not
    Info(vm_info::JsonArg),
    /// Run a workload as a container and as a VM and compare size, start time, memory, kernel
    /// and compatibility
    Compare(compare::CompareArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init();
    // CVE-2019-5736: a container's init is a fork of this process, so a workload could reach
    // this binary through /proc/<pid>/exe: commands that start processes in containers re-exec
    // from a read-only mount of it first (protect_binary below). An exec into a VM forks
    // nothing into the guest (the process starts there, through the VM's keeper): no re-exec.
    // Nor does `run` of a VM: its keeper (a fork of this process) execs only the VM, whose
    // guest processes cannot reach the host's /proc; the VM's cgroup still moves soon.
    let protect = match &cli.command {
        Command::Run(a) if a.create.is_vm() => {
            // A warm VM (`strata vm pool`) moves no process between cgroups on the way, and
            // the prewarm's grace period holds the cgroup lock its hand-over renames under:
            // only a cold boot gets it (here, or from its keeper when the pool had none that fit).
            if !strata_engine::vm_pool::any_ready(&cli.global.root) {
                strata_container::cgroups::prewarm::start();
            }
            false
        }
        Command::Run(_) | Command::Create(_) | Command::Start(_) | Command::Restart(_) => true,
        Command::Exec(a) => !exec::into_vm(&cli.global, a),
        _ => false,
    };
    if protect {
        if let Err(e) = protect_binary() {
            eprintln!("strata: error: {e}");
            return ExitCode::from(125);
        }
    }
    let result = match cli.command {
        Command::Images(a) => image::images(&cli.global, a),
        Command::Rmi(a) => image::rmi(&cli.global, a),
        Command::Inspect(a) if a.images.iter().all(|k| ps::is_container(&cli.global, k)) => {
            ps::inspect(&cli.global, &a.images)
        }
        Command::Inspect(a) => image::inspect(&cli.global, a),
        Command::Load(a) => image::load(&cli.global, a),
        Command::Import(a) => image::import(&cli.global, a),
        Command::Pull(a) => image::pull(&cli.global, a),
        Command::Login(a) => image::login(&cli.global, a),
        Command::Logout(a) => image::logout(&cli.global, a),
        Command::Image(c) => image::image_command(&cli.global, c),
        Command::Run(a) => run::run(&cli.global, a),
        Command::Create(a) => run::create(&cli.global, a),
        Command::Start(a) => lifecycle::start(&cli.global, a),
        Command::Stop(a) => lifecycle::stop(&cli.global, a),
        Command::Kill(a) => lifecycle::kill(&cli.global, a),
        Command::Restart(a) => lifecycle::restart(&cli.global, a),
        Command::Rm(a) => lifecycle::rm(&cli.global, a),
        Command::Ps(a) => ps::ps(&cli.global, a),
        Command::Network(c) => network::network(&cli.global, c),
        Command::Port(a) => network::port(&cli.global, a),
        Command::Exec(a) => exec::exec(&cli.global, a, protect_binary),
        Command::Logs(a) => logs::logs(&cli.global, a),
        Command::Attach(a) => attach::attach(&cli.global, a),
        Command::Wait(a) => lifecycle::wait(&cli.global, a),
        Command::Top(a) => ps::top(&cli.global, a),
        Command::Stats(a) => ps::stats(&cli.global, a),
        Command::Kernel(c) => vm_info::kernel(c),
        Command::Info(a) => vm_info::info(a),
        Command::Vm(c) => vm_pool::vm(&cli.global, c),
        Command::Compare(a) => compare::compare(&cli.global, a),
    };
    exit(result)
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
        if let Ok(agent) = strata_engine::vm_keeper::agent_path() {
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

/// Prints an error the way every strata command does and picks the exit code: a workload that
/// could not start exits with its [`strata_engine::StartError`]'s code (Docker's 125/126/127).
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<strata_engine::StartError>() {
            Some(s) => {
                eprintln!("strata: error: {}", s.message);
                // As exit(2) would take it: the low byte.
                ExitCode::from((s.code & 0xff) as u8)
            }
            None => {
                eprintln!("strata: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
