//! `strata run` and `strata create`: their flags, handed to strata-engine (run.rs there:
//! prepare, then the foreground run or a monitor).

use std::path::PathBuf;

use clap::Args;
use strata_engine::monitor;
use strata_engine::run::{foreground, prepare, ContainerRequest};

use super::global_args::Global;

/// Options shared by `run` and `create`.
#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// Name of the container (unique; generated when absent)
    #[arg(long)]
    pub name: Option<String>,
    /// Keep stdin open and pass it to the workload
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the workload a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Remove the container when it exits
    #[arg(long)]
    pub rm: bool,
    /// Environment variable K=V (K alone takes the value from strata's environment)
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// File of K=V lines (# comments, blank lines ignored)
    #[arg(long = "env-file")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User (name, uid, name:group or uid:gid) resolved in the image's /etc/passwd and /etc/group
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Bind a host directory or file: HOST:CONTAINER[:ro]
    #[arg(short = 'v', long = "volume")]
    pub volumes: Vec<String>,
    /// Mount a tmpfs: PATH[:OPTIONS] (e.g. /run:size=64m)
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// Memory limit (bytes, or with a k/m/g suffix)
    #[arg(short = 'm', long)]
    pub memory: Option<String>,
    /// CPU limit in CPUs (e.g. 0.5)
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Maximum number of processes
    #[arg(long = "pids-limit")]
    pub pids_limit: Option<i64>,
    /// Host name inside the container (default: the short id)
    #[arg(long)]
    pub hostname: Option<String>,
    /// Mount the root filesystem read-only
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Network: none (own empty network namespace), host, bridge (the default network, made on
    /// first use) or a network's name (`strata network create`)
    #[arg(long, default_value = "none")]
    pub network: String,
    /// Publish a port: [HOSTIP:][HOSTPORT:]PORT[/tcp|udp] (a free host port when HOSTPORT is left out)
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Publish every port the image EXPOSEs on a free host port
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Fixed IPv4 address on the network
    #[arg(long)]
    pub ip: Option<String>,
    /// Another name the other members of the network resolve this container by
    #[arg(long = "network-alias")]
    pub network_alias: Vec<String>,
    /// Run in a VM with its own guest kernel instead of a container
    #[arg(long)]
    pub vm: bool,
    /// VM platform: auto (qemu with KVM where the host has hardware virtualization, else uml),
    /// uml, qemu (KVM or, without hardware virtualization, TCG emulation) or kvm; implies --vm
    #[arg(long)]
    pub platform: Option<String>,
    /// Boot this guest kernel (an x86_64 bzImage) instead of the platform's; qemu only, implies
    /// --platform qemu
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<std::path::PathBuf>,
    /// An initrd for --kernel (e.g. its modules), unpacked after strata's agent
    #[arg(long, value_name = "PATH", requires = "kernel")]
    pub initrd: Option<std::path::PathBuf>,
    /// Replace the image's entrypoint ("" clears it)
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Image (name, ID or digest prefix), then the command and its arguments (default: the
    /// image's). Options end at the image name, as with docker.
    #[arg(
        value_name = "IMAGE [COMMAND [ARG...]]",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub image_and_cmd: Vec<String>,
}

impl CreateArgs {
    /// The flags as the engine takes them.
    fn into_request(self) -> ContainerRequest {
        let mut cmd = self.image_and_cmd;
        let image = cmd.remove(0);
        ContainerRequest {
            name: self.name,
            interactive: self.interactive,
            tty: self.tty,
            rm: self.rm,
            env: self.env,
            env_file: self.env_file,
            workdir: self.workdir,
            user: self.user,
            volumes: self.volumes,
            tmpfs: self.tmpfs,
            memory: self.memory,
            cpus: self.cpus,
            pids_limit: self.pids_limit,
            hostname: self.hostname,
            read_only: self.read_only,
            network: self.network,
            publish: self.publish,
            publish_all: self.publish_all,
            ip: self.ip,
            network_aliases: self.network_alias,
            vm: self.vm,
            platform: match (self.platform, &self.kernel) {
                (None, Some(_)) => Some("qemu".into()),
                (p, _) => p,
            },
            kernel: self.kernel,
            initrd: self.initrd,
            entrypoint: self.entrypoint,
            image,
            cmd,
        }
    }
}

impl CreateArgs {
    /// The workload runs in a VM (`--vm`, `--platform` or `--kernel`).
    pub fn is_vm(&self) -> bool {
        self.vm || self.platform.is_some() || self.kernel.is_some()
    }
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Run in the background and print the container id
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[command(flatten)]
    pub create: CreateArgs,
}

/// `strata create`: prints the new container's id.
pub fn create(g: &Global, a: CreateArgs) -> anyhow::Result<()> {
    let (_, rec) = prepare(&g.paths(), &a.into_request(), false)?;
    println!("{}", rec.id);
    Ok(())
}

/// `strata run`: exits with the workload's exit code in the foreground.
pub fn run(g: &Global, a: RunArgs) -> anyhow::Result<()> {
    let paths = g.paths();
    let c = a.create.into_request();
    if a.detach {
        let (containers, rec) = prepare(&paths, &c, false)?;
        let id = rec.id.clone();
        // On failure the monitor removed an --rm container; otherwise the record says it failed.
        monitor::spawn(&paths, &containers, rec)?;
        println!("{id}");
        return Ok(());
    }
    // Signals are blocked before the workload exists, so none is lost between its start and
    // the forwarding loop (the workload unblocks them before exec).
    let signals = strata_container::launch::block_forwarded_signals();
    let (containers, rec) = prepare(&paths, &c, true)?;
    match foreground(&paths, &containers, rec, &signals) {
        Ok(code) => std::process::exit(code),
        Err(e) => Err(e.into()),
    }
}
