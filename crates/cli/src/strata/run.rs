//! `strata run` and `strata create`: image → container directory (overlay rootfs, /etc files,
//! config.json, record) → workload, in the foreground (stdio passed straight through) or
//! detached under a monitor.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use strata_image::bundle::{EtcFiles, Network, RunOptions};
use strata_image::rootfs::ContainerRootfs;

use super::containers::{self, Containers, Record, State};
use super::instance::{self, Stdio};
use super::logs::{LogWriter, Stream};
use super::{lifecycle, monitor, relay, tty, Global};

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
    /// Network: none (own empty network namespace) or host
    #[arg(long, default_value = "none")]
    pub network: String,
    /// Run in a VM with its own guest kernel instead of a container
    #[arg(long)]
    pub vm: bool,
    /// VM platform: auto (kvm where hardware virtualization and the KVM monitor exist, else
    /// uml), uml or kvm; implies --vm
    #[arg(long)]
    pub platform: Option<String>,
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
    /// The image name.
    pub fn image(&self) -> &str {
        &self.image_and_cmd[0]
    }

    /// The command after the image name.
    pub fn cmd(&self) -> &[String] {
        &self.image_and_cmd[1..]
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
    let (_, rec) = prepare(g, &a, false)?;
    println!("{}", rec.id);
    Ok(())
}

/// `strata run`: exits with the workload's exit code in the foreground.
pub fn run(g: &Global, a: RunArgs) -> anyhow::Result<()> {
    let c = a.create;
    if a.detach {
        let (containers, rec) = prepare(g, &c, false)?;
        let id = rec.id.clone();
        // On failure the monitor removed an --rm container; otherwise the record says it failed.
        monitor::spawn(g, &containers, rec)?;
        println!("{id}");
        return Ok(());
    }
    // Signals are blocked before the workload exists, so none is lost between its start and
    // the forwarding loop (the workload unblocks them before exec).
    let signals = strata_container::launch::block_forwarded_signals();
    let (containers, rec) = prepare(g, &c, true)?;
    let code = foreground(g, &containers, rec, &c, &signals);
    std::process::exit(code)
}

/// Runs a prepared container attached to our stdio; returns the exit code for `strata` (the
/// workload's, or 125/126/127 when it could not start) after recording or removing it.
fn foreground(
    g: &Global,
    containers: &Containers,
    mut rec: Record,
    c: &CreateArgs,
    signals: &nix::sys::signal::SigSet,
) -> i32 {
    let backend = match instance::backend(&rec.isolation, &g.root) {
        Ok(b) => b,
        Err(e) => return fail(g, containers, &rec, 125, &format!("{e:#}")),
    };
    let dir = containers.dir(&rec.id);
    let null = match std::fs::File::open("/dev/null") {
        Ok(f) => OwnedFd::from(f),
        Err(e) => return fail(g, containers, &rec, 125, &format!("open /dev/null: {e}")),
    };
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    // -t: a terminal inside the workload's environment when the backend allocates one
    // (its controlling terminal), else a host pty as its stdio.
    let inner = if c.tty {
        match backend.start_with_terminal(&rec.id, &dir) {
            Ok(t) => t,
            Err(e) => return fail(g, containers, &rec, e.code, &e.message),
        }
    } else {
        None
    };
    let pty = if c.tty && inner.is_none() {
        match tty::open(stdin.as_fd()).and_then(|p| {
            set_console(&dir, Some(&p.slave_path))?;
            Ok(p)
        }) {
            Ok(p) => Some(p),
            Err(e) => return fail(g, containers, &rec, 125, &format!("{e:#}")),
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
            Err(e) => return fail(g, containers, &rec, 125, &format!("open the log file: {e}")),
        }
    };
    let pipes = if log.is_some() && !c.tty {
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        match pipe().and_then(|o| pipe().map(|e| (o, e))) {
            Ok(p) => Some(p),
            Err(e) => return fail(g, containers, &rec, 125, &format!("create pipes: {e}")),
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
            stdin: if c.interactive {
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
            tty::copy_size(stdin.as_fd(), master.as_fd());
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
        Err(e) => return fail(g, containers, &rec, e.code, &e.message),
    };
    // prepare() already recorded us as the running container's monitor; the pid is worth
    // another record write only for a container that outlives this run (not for --rm).
    if !rec.auto_remove {
        rec.pid = Some(pid);
        let _ = containers.save(&rec);
    }
    let code = match master {
        Some(master) => {
            let raw = if c.interactive {
                tty::RawMode::enable(stdin.as_fd())
            } else {
                None
            };
            let code = tty::relay(master, pid, c.interactive, signals, log.as_mut());
            drop(raw);
            code
        }
        None => match (outputs, log.as_mut()) {
            (Some(outputs), Some(log)) => relay_logged(outputs, pid, signals, log),
            _ => strata_container::launch::wait_forwarding(pid, signals),
        },
    };
    drop(log);
    backend.delete(&rec.id);
    settle(g, containers, &mut rec, code);
    code
}

/// The end of a container this process ran (foreground `run` or the monitor): removed with
/// `--rm`, else recorded as exited with `code`.
pub(super) fn settle(g: &Global, containers: &Containers, rec: &mut Record, code: i32) {
    if rec.auto_remove {
        lifecycle::remove_all(g, containers, rec);
    } else {
        rec.state = State::Exited;
        rec.exit_code = Some(code);
        rec.pid = None;
        rec.finished = Some(containers::now());
        let _ = containers.save(rec);
    }
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

/// A workload that could not start: say why, record or remove the container, pick the code.
fn fail(g: &Global, containers: &Containers, rec: &Record, code: i32, msg: &str) -> i32 {
    eprintln!("strata: error: {msg}");
    settle(g, containers, &mut rec.clone(), code);
    code
}

/// Removes a half-made container unless disarmed.
struct PrepareGuard<'a> {
    g: &'a Global,
    containers: Containers,
    rec: Record,
    armed: bool,
}

impl Drop for PrepareGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            lifecycle::remove_all(self.g, &self.containers, &self.rec);
        }
    }
}

/// Makes the container directory: name, overlay rootfs, /etc files, config.json, record.
/// `foreground`: this process runs it, so the record says "running" from the start (one record
/// write less on the `run --rm` path).
fn prepare(g: &Global, c: &CreateArgs, foreground: bool) -> anyhow::Result<(Containers, Record)> {
    let network = match c.network.as_str() {
        "none" => Network::None,
        "host" => Network::Host,
        other => bail!("unknown --network {other:?}: use none or host"),
    };
    // Validate everything the user typed before touching the store.
    let mounts = mounts(&c.volumes, &c.tmpfs)?;
    let env = environment(&c.env, &c.env_file)?;
    let resources = resources(c.memory.as_deref(), c.cpus, c.pids_limit)?;
    let store = g.image_store()?;
    let image = store.resolve(c.image())?;
    let containers = Containers::new(&g.store);
    let id = containers::new_id()?;
    let name = match &c.name {
        Some(n) => n.clone(),
        None => containers::generated_name(&id),
    };
    let vm = c.vm || c.platform.is_some();
    if vm && network == Network::Host {
        bail!("--network host: a VM has its own kernel and network stack and cannot share the host's; use --network none");
    }
    let isolation = instance::backend(if vm { "vm" } else { "container" }, &g.root)?.isolation();
    let dir = containers.reserve(&id, &name)?;
    let mut rec = Record {
        id: id.clone(),
        name,
        image: c.image().to_string(),
        image_digest: image.digest().to_string(),
        command: Vec::new(),
        created: containers::now(),
        state: if foreground {
            State::Running
        } else {
            State::Created
        },
        started: foreground.then(containers::now),
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
        g,
        containers: containers.clone(),
        rec: rec.clone(),
        armed: true,
    };
    // Held under the store lock, by digest (the image just resolved): a concurrent
    // `image prune` either ran before (and this fails cleanly) or keeps the layers.
    store.resolve_and_hold(image.digest().as_str(), &id)?;
    let rootfs_path = if vm {
        // A VM boots the image's root disk: no host overlay mount.
        super::vm::prepare(
            &g.store,
            &image,
            &dir,
            &mounts,
            &super::vm::VmOptions {
                platform: c.platform.as_deref().unwrap_or("auto"),
                memory: c.memory.as_deref(),
                cpus: c.cpus,
                tty: c.tty,
            },
        )?;
        dir.join("rootfs")
    } else {
        ContainerRootfs::create(&image, &dir)?.path()
    };
    let hostname = c
        .hostname
        .clone()
        .unwrap_or_else(|| containers::short(&id).to_string());
    let etc = write_etc_files(&dir, &hostname, network)?;
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
        cmd: c.cmd().to_vec(),
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
        cgroups_path: Some(instance::container_cgroups_path(&id)),
        resources,
    };
    let spec = strata_image::bundle::generate_config(&image, &opts)?;
    rec.command = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    let mut v = serde_json::to_value(&spec)?;
    if c.tty {
        // The pty is the host's (see tty.rs): the workload gets its slave as stdio, so the
        // runtime must not allocate one.
        v["process"]["terminal"] = serde_json::json!(false);
    }
    write_config(&dir, &v)?;
    containers.save(&rec)?;
    guard.armed = false;
    Ok((containers, rec))
}

fn write_config(dir: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    // No fsync: the container directory does not outlive a crash in a useful state anyway
    // (its overlay mount is gone), and fsync would dominate `run --rm` time.
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_vec(v)?).with_context(|| format!("write {}", p.display()))
}

/// Binds the host pty slave at /dev/console (or removes that mount) in config.json.
pub fn set_console(dir: &Path, slave: Option<&Path>) -> anyhow::Result<()> {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
    )
    .with_context(|| format!("parse {}", p.display()))?;
    let mounts = v["mounts"]
        .as_array_mut()
        .context("config.json has no mounts")?;
    mounts.retain(|m| m["destination"] != "/dev/console");
    if let Some(s) = slave {
        mounts.push(serde_json::json!({
            "destination": "/dev/console", "type": "bind", "source": s,
            "options": ["bind", "nosuid", "noexec"],
        }));
    }
    write_config(dir, &v)
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
