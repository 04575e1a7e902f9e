//! `strata`: the user command line. main() only parses arguments and dispatches to the command
//! modules in src/strata/.

#[path = "../strata/mod.rs"]
mod strata;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use strata::{attach, compare, exec, image, lifecycle, logs, ps, run, vm_info};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Run OCI images as containers or microVMs"
)]
struct Cli {
    #[command(flatten)]
    global: strata::Global,
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
    /// What this host supports: containers (cgroup layout) and VM platforms, and why not
    Info(vm_info::JsonArg),
    /// Run a workload as a container and as a VM and compare size, start time, memory, kernel
    /// and compatibility
    Compare(compare::CompareArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    strata::init();
    // CVE-2019-5736: a container's init is a fork of this process, so a workload could reach
    // this binary through /proc/<pid>/exe: commands that start processes in containers re-exec
    // from a read-only mount of it first (strata/mod.rs).
    if matches!(
        cli.command,
        Command::Run(_)
            | Command::Create(_)
            | Command::Start(_)
            | Command::Restart(_)
            | Command::Exec(_)
    ) {
        if let Err(e) = strata::protect_binary() {
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
        Command::Exec(a) => exec::exec(&cli.global, a),
        Command::Logs(a) => logs::logs(&cli.global, a),
        Command::Attach(a) => attach::attach(&cli.global, a),
        Command::Wait(a) => lifecycle::wait(&cli.global, a),
        Command::Top(a) => ps::top(&cli.global, a),
        Command::Stats(a) => ps::stats(&cli.global, a),
        Command::Kernel(c) => vm_info::kernel(c),
        Command::Info(a) => vm_info::info(a),
        Command::Compare(a) => compare::compare(&cli.global, a),
    };
    strata::exit(result)
}
