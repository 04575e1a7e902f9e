//! A new container: image → container directory (overlay rootfs or VM disk, /etc files,
//! config.json, record) with [`prepare`] → workload, in the foreground ([`foreground`]: stdio
//! passed straight through, or relayed and logged) or detached under a monitor (monitor.rs).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use strata_image::bundle::{EtcFiles, Network, RunOptions};
use strata_image::rootfs::ContainerRootfs;

use crate::backend::{StartError, Stdio};
use crate::container_backend::container_cgroups_path;
use crate::container_log::{LogWriter, Stream};
use crate::paths::Paths;
use crate::records::{self, Containers, Record, State};
use crate::vm_backend::{self, VmOptions};
use crate::{config_json, isolation, network, options, pty, relay, removal, terminal_relay};

/// What the user asked for in a new container (`strata run`/`create`'s flags, unparsed: the
/// engine validates them in [`prepare`] before it touches the store).
#[derive(Debug, Clone, Default)]
pub struct ContainerRequest {
    /// Unique name; generated when absent.
    pub name: Option<String>,
    /// `-i`: stdin stays open and reaches the workload.
    pub interactive: bool,
    /// `-t`: the workload gets a terminal.
    pub tty: bool,
    /// `--rm`: removed when it exits.
    pub rm: bool,
    /// `-e K=V` (K alone: from our environment).
    pub env: Vec<String>,
    /// `--env-file`.
    pub env_file: Vec<PathBuf>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    /// `-v HOST:CONTAINER[:ro]`.
    pub volumes: Vec<String>,
    /// `--tmpfs PATH[:OPTIONS]`.
    pub tmpfs: Vec<String>,
    pub memory: Option<String>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub hostname: Option<String>,
    pub read_only: bool,
    /// `none`, `host`, `bridge` (the default network) or a network's name.
    pub network: String,
    /// `-p [HOSTIP:][HOSTPORT:]PORT[/tcp|udp]`.
    pub publish: Vec<String>,
    /// `-P`: publish every port the image EXPOSEs on a free host port.
    pub publish_all: bool,
    /// `--ip`: a fixed address on the network.
    pub ip: Option<String>,
    /// `--network-alias`: more names the other members resolve this one by.
    pub network_aliases: Vec<String>,
    /// Run in a VM.
    pub vm: bool,
    /// VM platform (`auto`, `uml`, `qemu`, `kvm`); implies `vm`.
    pub platform: Option<String>,
    /// A guest kernel the user brings (qemu), and its initrd.
    pub kernel: Option<std::path::PathBuf>,
    pub initrd: Option<std::path::PathBuf>,
    /// Replaces the image's entrypoint ("" clears it).
    pub entrypoint: Option<String>,
    /// The image as the user named it.
    pub image: String,
    /// The command (default: the image's).
    pub cmd: Vec<String>,
}

/// Runs a prepared container attached to our stdio (`signals`: blocked by the caller before
/// [`prepare`], forwarded to the workload); returns the workload's exit code, or why it could
/// not start (with 125/126/127), after recording or removing the container either way.
pub fn foreground(
    paths: &Paths,
    containers: &Containers,
    mut rec: Record,
    signals: &nix::sys::signal::SigSet,
) -> Result<i32, StartError> {
    let (tty, interactive) = (rec.tty, rec.interactive);
    let backend = match isolation::backend(&rec.isolation, &paths.root) {
        Ok(b) => b,
        Err(e) => return fail(paths, containers, &rec, 125, &format!("{e:#}")),
    };
    let dir = containers.dir(&rec.id);
    if let Err(e) = network::up(paths, &rec.id, &rec.name, &dir) {
        return fail(paths, containers, &rec, 125, &format!("{e:#}"));
    }
    let null = match std::fs::File::open("/dev/null") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => {
            return fail(
                paths,
                containers,
                &rec,
                125,
                &format!("open /dev/null: {e}"),
            )
        }
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    // -t: a terminal inside the workload's environment when the backend allocates one
    // (its controlling terminal), else a host pty as its stdio.
    let inner = if tty {
        match backend.start_with_terminal(&rec.id, &dir) {
            Ok(t) => t,
            Err(e) => return fail(paths, containers, &rec, e.code, &e.message),
        }
    } else {
        None
    };
    let pty = if tty && inner.is_none() {
        match pty::open(stdin.as_fd()).and_then(|p| {
            config_json::set_console(&dir, Some(&p.slave_path))?;
            Ok(p)
        }) {
            Ok(p) => Some(p),
            Err(e) => return fail(paths, containers, &rec, 125, &format!("{e:#}")),
        }
    } else {
        None
    };
    // A container that outlives this run keeps its output in its log, as a detached one does
    // (`strata logs` afterwards, like docker): its stdout and stderr go through pipes we copy
    // from (or the pty we relay). `--rm` keeps the workload on our stdio: nothing would be
    // left to read the log from, and the start stays free of the relay.
    let mut log = if rec.auto_remove {
        None
    } else {
        match LogWriter::open(&containers.log_path(&rec.id)) {
            Ok(l) => Some(l),
            Err(e) => {
                return fail(
                    paths,
                    containers,
                    &rec,
                    125,
                    &format!("open the log file: {e}"),
                )
            }
        }
    };
    let pipes = if log.is_some() && !tty {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        match pipe().and_then(|o| pipe().map(|e| (o, e))) {
            Ok(p) => Some(p),
            Err(e) => return fail(paths, containers, &rec, 125, &format!("create pipes: {e}")),
        }
    } else {
        None
    };
    let stdio = match (&pty, &pipes) {
        (Some(p), _) => Stdio {
            stdin: p.slave.as_fd(),
            stdout: p.slave.as_fd(),
            stderr: p.slave.as_fd(),
        },
        (None, pipes) => Stdio {
            stdin: if interactive {
                stdin.as_fd()
            } else {
                null.as_fd()
            },
            stdout: pipes
                .as_ref()
                .map(|((_, w), _)| w.as_fd())
                .unwrap_or(stdout.as_fd()),
            stderr: pipes
                .as_ref()
                .map(|(_, (_, w))| w.as_fd())
                .unwrap_or(stderr.as_fd()),
        },
    };
    let started = match inner {
        Some((pid, master)) => {
            pty::copy_size(stdin.as_fd(), master.as_fd());
            Ok((pid, Some(master)))
        }
        None => backend
            .start(&rec.id, &dir, stdio)
            .map(|pid| (pid, pty.map(|p| p.master))),
    };
    drop(null);
    // Only the workload holds the write ends now: EOF when it and its children are gone.
    let outputs = pipes
        .map(|((out_r, _), (err_r, _))| vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)]);
    let (pid, master) = match started {
        Ok(s) => s,
        Err(e) => return fail(paths, containers, &rec, e.code, &e.message),
    };
    strata_container::kill_point::hit("run:started");
    // prepare() already recorded us as the running container's monitor; the pid is worth
    // another record write only for a container that outlives this run (not for --rm).
    if !rec.auto_remove {
        rec.pid = Some(pid);
        let _ = containers.save(&rec);
    }
    let code = match master {
        Some(master) => {
            let raw = if interactive {
                pty::RawMode::enable(stdin.as_fd())
            } else {
                None
            };
            let code = terminal_relay::run(master, pid, interactive, signals, log.as_mut());
            drop(raw);
            code
        }
        None => match (outputs, log.as_mut()) {
            (Some(outputs), Some(log)) => relay_logged(outputs, pid, signals, log),
            _ => strata_container::launch::wait_forwarding(pid, signals),
        },
    };
    drop(log);
    strata_container::kill_point::hit("run:exited");
    backend.delete(&rec.id);
    removal::settle(paths, containers, &mut rec, code);
    Ok(code)
}

/// The foreground output of a logged container: its stdout and stderr pipes copied to ours
/// and to the log until they close, the blocked `signals` forwarded to it; returns its exit
/// code.
fn relay_logged(
    sources: Vec<(OwnedFd, Stream)>,
    pid: i32,
    signals: &nix::sys::signal::SigSet,
    log: &mut LogWriter,
) -> i32 {
    // A closed stdout of ours must not kill us (the container would go unrecorded); the
    // workload, already started, keeps its own SIGPIPE disposition.
    // SAFETY: changing a signal disposition of this single-threaded process.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
    let mut front = Foreground {
        stdout: stdout.as_fd(),
        stderr: stderr.as_fd(),
        signals: relay::Signals::new(pid, signals),
    };
    relay::run(sources, Some(log), &mut front);
    front.signals.finish()
}

/// The relay's front end for a logged foreground container: our stdout/stderr, signals.
struct Foreground<'a> {
    stdout: BorrowedFd<'a>,
    stderr: BorrowedFd<'a>,
    signals: relay::Signals<'a>,
}

impl relay::Front for Foreground<'_> {
    fn poll_fds<'f>(&'f self, fds: &mut Vec<PollFd<'f>>) {
        fds.extend(self.signals.poll_fd());
    }

    fn output(&mut self, stream: Stream, data: &[u8]) -> bool {
        let ours = match stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        };
        // Our reader went away (`strata run ... | head`): false closes the pipe so the
        // workload sees the same, as with our stdio passed straight on.
        relay::write_all(ours, data)
    }

    fn handle(&mut self, revents: &[PollFlags], _buf: &mut [u8]) {
        if let Some(r) = revents.first() {
            self.signals.handle(*r, None);
        }
    }

    fn linger(&self) -> Option<PollTimeout> {
        // After the exit, whatever is still in the pipes arrives at once; a pipe some
        // escaped process keeps open must not hold us forever.
        self.signals.exited().then(|| PollTimeout::from(2000u16))
    }
}

/// A workload that could not start: record or remove the container; the error says why.
fn fail(
    paths: &Paths,
    containers: &Containers,
    rec: &Record,
    code: i32,
    msg: &str,
) -> Result<i32, StartError> {
    removal::settle(paths, containers, &mut rec.clone(), code);
    Err(StartError {
        code,
        message: msg.to_string(),
    })
}

/// Removes a half-made container unless disarmed.
struct PrepareGuard<'a> {
    paths: &'a Paths,
    containers: Containers,
    rec: Record,
    armed: bool,
}

impl Drop for PrepareGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            removal::remove_all(self.paths, &self.containers, &self.rec);
        }
    }
}

/// Makes the container directory: name, overlay rootfs, /etc files, config.json, record.
/// `foreground`: this process runs it, so the record says "running" from the start (one record
/// write less on the `run --rm` path).
pub fn prepare(
    paths: &Paths,
    c: &ContainerRequest,
    foreground: bool,
) -> anyhow::Result<(Containers, Record)> {
    let net_mode = network::mode(&c.network);
    let network = match net_mode {
        network::Mode::Host => Network::Host,
        // A bridge member gets its own namespace too, joined by path (see below).
        network::Mode::None | network::Mode::Bridge(_) => Network::None,
    };
    let on_bridge = matches!(net_mode, network::Mode::Bridge(_));
    if !on_bridge
        && (!c.publish.is_empty()
            || c.publish_all
            || c.ip.is_some()
            || !c.network_aliases.is_empty())
    {
        bail!(
            "-p, -P, --ip and --network-alias need a bridge network (--network bridge or a network's name), not --network {}",
            c.network
        );
    }
    let mut ports = c
        .publish
        .iter()
        .map(|p| strata_net::PortSpec::parse(p))
        .collect::<Result<Vec<_>, _>>()?;
    let ip = match &c.ip {
        Some(s) => Some(
            s.parse::<std::net::Ipv4Addr>()
                .map_err(|_| anyhow::anyhow!("--ip {s:?} is not an IPv4 address"))?,
        ),
        None => None,
    };
    // Validate everything the user typed before touching the store.
    let mounts = options::mounts(&c.volumes, &c.tmpfs)?;
    let env = options::environment(&c.env, &c.env_file)?;
    let resources = options::resources(c.memory.as_deref(), c.cpus, c.pids_limit)?;
    let store = paths.image_store()?;
    let image = store.resolve(&c.image)?;
    let containers = paths.containers();
    let id = records::new_id()?;
    let name = match &c.name {
        Some(n) => n.clone(),
        None => records::generated_name(&id),
    };
    let vm = c.vm || c.platform.is_some();
    if vm && network == Network::Host {
        bail!("--network host: a VM has its own kernel and network stack and cannot share the host's; use --network none");
    }
    if let network::Mode::Bridge(name) = &net_mode {
        // An unknown network fails here, before the store is touched (`bridge` is made on
        // first use).
        network::networks(paths)?.get(name)?;
    }
    if c.publish_all {
        let exposed = image
            .config()
            .config()
            .as_ref()
            .and_then(|c| c.exposed_ports().clone())
            .unwrap_or_default();
        for key in exposed {
            ports.push(strata_net::PortSpec::from_exposed(&key)?);
        }
    }
    let isolation =
        isolation::backend(if vm { "vm" } else { "container" }, &paths.root)?.isolation();
    let dir = containers.reserve(&id, &name)?;
    let mut rec = Record {
        id: id.clone(),
        name,
        image: c.image.clone(),
        image_digest: image.digest().to_string(),
        command: Vec::new(),
        created: records::now(),
        state: if foreground {
            State::Running
        } else {
            State::Created
        },
        started: foreground.then(records::now),
        finished: None,
        exit_code: None,
        monitor_pid: foreground.then(|| std::process::id() as i32),
        pid: None,
        isolation: isolation.into(),
        auto_remove: c.rm,
        tty: c.tty,
        interactive: c.interactive,
    };
    let mut guard = PrepareGuard {
        paths,
        containers: containers.clone(),
        rec: rec.clone(),
        armed: true,
    };
    // Recorded at once: a `strata run` killed from here on leaves a container that `ps -a`
    // lists and `rm -f` removes (hold, mount, name, directory), not an unnamed directory.
    containers.save(&rec)?;
    strata_container::kill_point::hit("prepare:reserved");
    // Held under the store lock, by digest (the image just resolved): a concurrent
    // `image prune` either ran before (and this fails cleanly) or keeps the layers.
    store.resolve_and_hold(image.digest().as_str(), &id)?;
    strata_container::kill_point::hit("prepare:held");
    let rootfs_path = if vm {
        // A VM boots the image's root disk: no host overlay mount.
        vm_backend::prepare(
            &paths.store,
            &image,
            &dir,
            &mounts,
            &VmOptions {
                platform: c.platform.as_deref().unwrap_or("auto"),
                memory: c.memory.as_deref(),
                cpus: c.cpus,
                tty: c.tty,
                kernel: c.kernel.as_deref(),
                initrd: c.initrd.as_deref(),
                network: on_bridge.then_some(c.network.as_str()),
            },
        )?;
        dir.join("rootfs")
    } else {
        ContainerRootfs::create(&image, &dir)?.path()
    };
    strata_container::kill_point::hit("prepare:rootfs");
    let hostname = c
        .hostname
        .clone()
        .unwrap_or_else(|| records::short(&id).to_string());
    let etc = write_etc_files(&dir, &hostname, network)?;
    if let network::Mode::Bridge(name) = &net_mode {
        network::prepare(
            paths,
            &dir,
            &network::NetworkSettings {
                network: name.clone(),
                ip,
                ports,
                aliases: c.network_aliases.clone(),
                ..Default::default()
            },
        )?;
    }
    let entrypoint = c.entrypoint.as_ref().map(|e| {
        if e.is_empty() {
            Vec::new()
        } else {
            vec![e.clone()]
        }
    });
    let opts = RunOptions {
        rootfs: rootfs_path,
        entrypoint,
        cmd: c.cmd.clone(),
        env,
        workdir: c.workdir.clone(),
        user: c.user.clone(),
        hostname: Some(hostname),
        tty: c.tty,
        read_only: c.read_only,
        network,
        etc_files: Some(etc),
        mounts,
        annotations: BTreeMap::from([("dev.strata.isolation".into(), isolation.into())]),
        cgroups_path: Some(container_cgroups_path(&id)),
        resources,
    };
    let spec = strata_image::bundle::generate_config(&image, &opts)?;
    rec.command = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    let mut v = serde_json::to_value(&spec)?;
    if on_bridge {
        // The namespace the run makes and attaches right before the start (network::up).
        let path = network::netns_path(paths, &id);
        if let Some(nss) = v["linux"]["namespaces"].as_array_mut() {
            for ns in nss.iter_mut().filter(|n| n["type"] == "network") {
                ns["path"] = serde_json::json!(path);
            }
        }
    }
    if c.tty {
        // The pty is the host's (see pty.rs): the workload gets its slave as stdio, so the
        // runtime must not allocate one.
        v["process"]["terminal"] = serde_json::json!(false);
    }
    config_json::write_config(&dir, &v)?;
    containers.save(&rec)?;
    strata_container::kill_point::hit("prepare:recorded");
    guard.armed = false;
    Ok((containers, rec))
}

fn write_etc_files(dir: &Path, hostname: &str, network: Network) -> anyhow::Result<EtcFiles> {
    let etc = dir.join("etc");
    std::fs::create_dir(&etc).with_context(|| format!("create {}", etc.display()))?;
    let files = EtcFiles {
        hostname: etc.join("hostname"),
        hosts: etc.join("hosts"),
        resolv_conf: etc.join("resolv.conf"),
    };
    std::fs::write(&files.hostname, format!("{hostname}\n"))
        .with_context(|| format!("write {}", files.hostname.display()))?;
    std::fs::write(
        &files.hosts,
        format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"),
    )
    .with_context(|| format!("write {}", files.hosts.display()))?;
    // With its own empty network namespace the container cannot reach the host's resolver
    // anyway; with the host network it uses the host's.
    let resolv = match network {
        Network::Host => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
        Network::None => Vec::new(),
    };
    std::fs::write(&files.resolv_conf, resolv)
        .with_context(|| format!("write {}", files.resolv_conf.display()))?;
    Ok(files)
}
