//! The container lifecycle as the OCI runtime spec defines it (create, start, state, kill,
//! delete) plus runc's extras (run, exec, pause, resume, update, ps, events, list), over the
//! state directory `<root>/<id>`.

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};
use serde::Serialize;

use crate::capabilities::CapSets;
use crate::cgroups::{Cgroup, CgroupError};
use crate::id::{self, InvalidId};
use crate::init::InitConfig;
use crate::launch::{self, ExecConfig, LaunchError};
use crate::namespaces::Plan;
use crate::spec::{self, SpecError};
use crate::state::{self, Record, StateError, Status, EXEC_FIFO};

/// The default `--root`.
pub const DEFAULT_ROOT: &str = "/run/strata";

/// A lifecycle command failed. Messages follow runc's where engines match on them.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    #[error("container {0:?} does not exist")]
    NotExist(String),
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("rootfs ({0}) does not exist; create it or fix root.path in config.json")]
    NoRootfs(PathBuf),
    #[error("config.json: the container needs a mount namespace (add {{\"type\": \"mount\"}} to linux.namespaces): strata does not mount the rootfs, /proc and /dev in the host's mount namespace")]
    NoMountNamespace,
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("cannot delete container {id} that is not stopped: {status}")]
    NotStopped { id: String, status: Status },
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already running container")]
    StartRunning,
    #[error("cannot start a container in the {0} state")]
    StartState(Status),
    #[error("container not running")]
    NotRunning,
    #[error("container not paused")]
    NotPaused,
    #[error("cannot exec in a stopped container")]
    ExecStopped,
    #[error("cannot exec in a paused container")]
    ExecPaused,
    #[error("{step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("send signal: {0}")]
    Kill(nix::Error),
    #[error("{0}")]
    Hook(String),
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
}

fn io(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_path_buf();
    move |source| ContainerError::Io { step, path, source }
}

/// Options of `create` / `run`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub preserve_fds: i32,
}

/// Options of `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    pub detach: bool,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: i32,
}

/// The state of a container as `strata-oci state` prints it (runc's shape).
#[derive(Debug, Clone, Serialize)]
pub struct ContainerState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// Why the init died before the workload's execve (recorded by a failed `start`); a
    /// strata extension, absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A loaded container: its record and cgroup.
struct Loaded {
    dir: PathBuf,
    rec: Record,
    cg: Cgroup,
}

impl Loaded {
    /// The config the container was created with (the bundle's for a container created
    /// before the copy was kept).
    fn spec(&self) -> Result<Spec, SpecError> {
        if self.dir.join(state::CONFIG_FILE).exists() {
            spec::load(&self.dir)
        } else {
            spec::load(&self.rec.bundle)
        }
    }

    fn status(&self) -> Status {
        if !state::init_alive(&self.rec) {
            return Status::Stopped;
        }
        if self.dir.join(EXEC_FIFO).exists() {
            return Status::Created;
        }
        if self.cg.is_frozen().unwrap_or(false) {
            return Status::Paused;
        }
        Status::Running
    }

    fn state(&self) -> ContainerState {
        let status = self.status();
        ContainerState {
            oci_version: "1.0.2".into(),
            id: self.rec.id.clone(),
            pid: if status == Status::Stopped {
                0
            } else {
                self.rec.pid
            },
            status,
            bundle: self.rec.bundle.clone(),
            rootfs: self.rec.rootfs.clone(),
            created: self.rec.created.clone(),
            owner: owner_name(self.rec.owner),
            annotations: self.rec.annotations.clone(),
            error: self.rec.error.clone().filter(|_| status == Status::Stopped),
        }
    }
}

fn owner_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// Removes what a failed `create` made (state dir, cgroup), unless disarmed.
struct CreateGuard<'a> {
    dir: &'a Path,
    cg: Option<Cgroup>,
    armed: bool,
}

impl Drop for CreateGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(cg) = &self.cg {
                let _ = cg.destroy();
            }
            let _ = std::fs::remove_dir_all(self.dir);
        }
    }
}

/// What `create_inner` started.
struct Started {
    /// The init's host pid.
    pid: i32,
    /// The state directory.
    dir: PathBuf,
    /// The pty master the runtime relays itself (foreground terminal without a socket).
    master: Option<std::os::fd::OwnedFd>,
}

/// How `create_inner` leaves init.
#[derive(PartialEq)]
enum Mode {
    /// Blocked on exec.fifo until `start`.
    Create,
    /// Straight to exec.
    Run,
}

/// The runtime, rooted at a state directory (`--root`).
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
}

impl Runtime {
    /// A runtime keeping its state under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    fn dir(&self, id: &str) -> Result<PathBuf, ContainerError> {
        id::validate(id)?;
        Ok(self.root.join(id))
    }

    fn load(&self, id: &str) -> Result<Loaded, ContainerError> {
        let dir = self.dir(id)?;
        if !dir.join("state.json").exists() {
            return Err(ContainerError::NotExist(id.to_string()));
        }
        let rec = state::load(&dir)?;
        let cg: Cgroup =
            serde_json::from_value(rec.cgroup.clone()).map_err(|e| StateError::Corrupt {
                path: dir.join("state.json"),
                msg: e.to_string(),
            })?;
        Ok(Loaded { dir, rec, cg })
    }

    fn lock(&self, id: &str) -> Result<state::Lock, ContainerError> {
        let dir = self.dir(id)?;
        if !dir.is_dir() {
            return Err(ContainerError::NotExist(id.to_string()));
        }
        Ok(state::lock(&dir)?)
    }

    /// `create`: sets the container up and leaves its init blocked before exec until `start`.
    /// Returns the init's host pid.
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<i32, ContainerError> {
        Ok(self.create_inner(id, opts, Mode::Create, None)?.pid)
    }

    /// `run`: create + start. Detached, returns once the workload is exec'ing (exit code 0);
    /// otherwise waits for it, forwarding signals (relaying its terminal when process.terminal
    /// is set without `--console-socket`, as runc does), deletes the container (poststop hooks
    /// included) and returns its exit code.
    pub fn run(&self, id: &str, opts: &CreateOptions, detach: bool) -> Result<i32, ContainerError> {
        if detach {
            self.create_inner(id, opts, Mode::Run, None)?;
            return Ok(0);
        }
        let set = launch::block_forwarded_signals();
        let started = self.create_inner(id, opts, Mode::Run, Some(&set))?;
        let code = match started.master {
            Some(master) => crate::console::relay(master, started.pid, &set),
            None => Ok(launch::wait_forwarding(started.pid, &set)),
        };
        // The container is over: remove it like `delete` would.
        if let Ok(l) = self.load(id) {
            self.destroy(&l);
        } else {
            let _ = std::fs::remove_dir_all(&started.dir);
        }
        Ok(code?)
    }

    fn create_inner(
        &self,
        id: &str,
        opts: &CreateOptions,
        mode: Mode,
        _forwarding: Option<&nix::sys::signal::SigSet>,
    ) -> Result<Started, ContainerError> {
        let dir = self.dir(id)?;
        let config_bytes = spec::read(&opts.bundle)?;
        let mut spec = spec::parse(&config_bytes)?;
        // Nobody reads the runtime's stdio after `create` or `run -d`.
        let detached = mode == Mode::Create || _forwarding.is_none();
        let terminal = match spec.process() {
            Some(p) => {
                crate::console::Terminal::for_process(p, opts.console_socket.as_deref(), detached)?
            }
            None => crate::console::Terminal::None,
        };
        if let Some(p) = spec.process_mut() {
            terminal.size_process(p);
        }
        let bundle =
            std::path::absolute(&opts.bundle).map_err(io("resolve bundle", &opts.bundle))?;
        let root_path = spec
            .root()
            .as_ref()
            .map(|r| r.path().clone())
            .unwrap_or_default();
        let rootfs = if root_path.is_absolute() {
            root_path
        } else {
            bundle.join(root_path)
        };
        if !rootfs.is_dir() {
            return Err(ContainerError::NoRootfs(rootfs));
        }
        let plan = Plan::from_spec(spec.linux().as_ref());
        if !plan.new_mount
            && !plan
                .join
                .iter()
                .any(|(t, _)| *t == LinuxNamespaceType::Mount)
        {
            return Err(ContainerError::NoMountNamespace);
        }
        create_root_dir(&self.root)?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(ContainerError::Exists(id.to_string()))
            }
            Err(e) => return Err(io("create state directory", &dir)(e)),
        }
        let mut guard = CreateGuard {
            dir: &dir,
            cg: None,
            armed: true,
        };
        let lock = state::lock(&dir)?;
        // The config as created: the spec's lifecycle says updates to config.json after
        // `create` must not affect the container (start's, exec's and delete's hooks and
        // seccomp profile come from this copy).
        std::fs::write(dir.join(state::CONFIG_FILE), &config_bytes)
            .map_err(io("save config", &dir.join(state::CONFIG_FILE)))?;
        crate::kill_point::hit("create:state-dir");
        let linux = spec.linux().as_ref();
        let mut cg = Cgroup::resolve(linux.and_then(|l| l.cgroups_path().as_deref()), id)?;
        // sd_notify, runc's scheme: the relay directory is bind-mounted into the container.
        let notify = crate::notify::NotifySocket::from_env(&dir);
        if let Some(n) = &notify {
            n.setup_spec(&mut spec)
                .and_then(|()| n.create_dir())
                .map_err(|e| ContainerError::Launch(LaunchError::Child(e.to_string())))?;
        }
        // `run` starts the workload at once: the relay socket must exist before (`create`
        // leaves that to `start`).
        let notify_sock = match (&notify, &mode) {
            (Some(n), Mode::Run) => Some(n.bind()?),
            _ => None,
        };
        // Socket activation: LISTEN_FDS handed to the runtime go on to the container (fds 3..).
        let listen_fds = crate::fds::listen_fds_from_env();
        if let Some(p) = spec.process_mut().as_mut().filter(|_| listen_fds > 0) {
            crate::fds::apply_listen_env(p.env_mut().get_or_insert_with(Vec::new), listen_fds);
        }
        let fifo = dir.join(EXEC_FIFO);
        if mode == Mode::Create {
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
                .map_err(|e| io("mkfifo", &fifo)(e.into()))?;
            // 0622 whatever our umask: a user namespace's root (a host uid that is not ours)
            // opens it for writing. Nobody else reaches it: the state root is 0700.
            std::fs::set_permissions(&fifo, std::os::unix::fs::PermissionsExt::from_mode(0o622))
                .map_err(io("chmod", &fifo))?;
        }
        let cfg = InitConfig {
            id,
            spec: &spec,
            bundle: &bundle,
            rootfs: &rootfs,
            plan: &plan,
            no_pivot: opts.no_pivot,
            no_new_keyring: opts.no_new_keyring,
            exec_fifo: (mode == Mode::Create).then_some(fifo.as_path()),
            cgroup_dirs: cgroup_dirs(&cg),
            preserve_fds: opts.preserve_fds + listen_fds as i32,
            console: terminal.container_end(),
            lock_fd: Some(lock.raw_fd()),
        };
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let hooks = |pid: i32| hooks_create_runtime(&spec, id, pid, &bundle);
        // The init does its first mounts while we create its cgroups (~0.4 ms of mkdir and
        // resource writes); it waits for them only where it binds them (rootfs.rs). A failed
        // create kills and reaps it (`Cloned`'s drop) before the guard removes the cgroups.
        let cloned = launch::clone_init(&cfg)?;
        crate::kill_point::hit("create:cloned");
        cg.create(Some(&effective_resources(&spec)))?;
        guard.cg = Some(cg.clone());
        crate::kill_point::hit("create:cgroups");
        cloned.cgroups_created();
        let spawned = cloned.finish(&cfg, &cg, &hooks)?;
        let pid = spawned.pid;
        crate::kill_point::hit("create:init-ready");
        // init sent the master before it reported ready.
        let master = match terminal.take_master() {
            Ok(m) => m,
            Err(e) => {
                launch::kill_and_reap(pid);
                return Err(e.into());
            }
        };
        let rec = Record {
            id: id.to_string(),
            pid,
            pid_start_time: state::start_time(pid).unwrap_or(0),
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created,
            annotations: spec.annotations().clone().unwrap_or_default(),
            cgroup: serde_json::to_value(&cg).map_err(|e| StateError::Corrupt {
                path: dir.join("state.json"),
                msg: e.to_string(),
            })?,
            user_ns: plan.new_user
                || plan
                    .join
                    .iter()
                    .any(|(t, _)| *t == LinuxNamespaceType::User),
            owner: nix::unistd::geteuid().as_raw(),
            error: None,
            started: spawned.exec_time.map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
            }),
        };
        let saved = state::save_with(&dir, &rec, _forwarding.is_none())
            .map_err(ContainerError::from)
            .and_then(|()| match &opts.pid_file {
                Some(p) => write_pid_file(p, pid),
                None => Ok(()),
            });
        if let Err(e) = saved {
            launch::kill_and_reap(pid);
            return Err(e);
        }
        crate::kill_point::hit("create:state-written");
        guard.armed = false;
        if mode == Mode::Run {
            hooks_poststart(&spec, id, pid, &bundle);
        }
        drop(guard);
        if let (Some(n), Some(sock)) = (notify, notify_sock) {
            if detached {
                // `run -d`, like runc: return once the workload reported READY (or exited),
                // naming it as the main pid.
                n.relay_ready(&sock, pid)?;
            } else {
                // Foreground, like runc: the runtime stays the main process systemd watches
                // (MAINPID = ours) while it waits for the workload.
                let me = std::process::id() as i32;
                std::thread::spawn(move || {
                    if let Err(e) = n.relay_ready_as(&sock, pid, me) {
                        tracing::warn!("{e}");
                    }
                });
            }
        }
        Ok(Started { pid, dir, master })
    }

    /// `start`: releases a created container's init to exec the workload.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let _lock = self.lock(id)?;
        let l = self.load(id)?;
        match l.status() {
            Status::Created => {}
            Status::Stopped => return Err(ContainerError::StartStopped),
            Status::Running => return Err(ContainerError::StartRunning),
            s => return Err(ContainerError::StartState(s)),
        }
        // sd_notify: bind the relay socket before the workload can send to it.
        let notify = match crate::notify::NotifySocket::from_env(&l.dir) {
            Some(n) => {
                let sock = n
                    .bind()
                    .map_err(|e| ContainerError::Launch(LaunchError::Child(e.to_string())))?;
                Some((n, sock))
            }
            None => None,
        };
        if let Err(e) = release_init(&l) {
            // `state` shows why the container stopped before its workload ran.
            let mut rec = l.rec.clone();
            rec.error = Some(e.to_string());
            let _ = state::save(&l.dir, &rec);
            return Err(e);
        }
        if let Some((n, sock)) = notify {
            // Like runc, `start` returns once the container reported READY (or exited).
            n.relay_ready(&sock, l.rec.pid)
                .map_err(|e| ContainerError::Launch(LaunchError::Child(e.to_string())))?;
        }
        if let Ok(spec) = l.spec() {
            hooks_poststart(&spec, id, l.rec.pid, &l.rec.bundle);
        }
        Ok(())
    }

    /// `state`.
    pub fn state(&self, id: &str) -> Result<ContainerState, ContainerError> {
        Ok(self.load(id)?.state())
    }

    /// `list`: every container under the root.
    pub fn list(&self) -> Result<Vec<ContainerState>, ContainerError> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io("list", &self.root)(e)),
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Ok(l) = self.load(&name) {
                out.push(l.state());
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// `kill`: sends `sig` to the init (or, with `all`, to every process of the cgroup).
    pub fn kill(&self, id: &str, sig: Signal, all: bool) -> Result<(), ContainerError> {
        let l = self.load(id)?;
        if all {
            for p in l.cg.pids()? {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), sig);
            }
            return Ok(());
        }
        if l.status() == Status::Stopped {
            return Err(ContainerError::NotRunning);
        }
        nix::sys::signal::kill(Pid::from_raw(l.rec.pid), sig).map_err(ContainerError::Kill)
    }

    /// `delete`: removes a stopped (or created) container; `force` kills a running one first.
    pub fn delete(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let _lock = self.lock(id)?;
        let l = match self.load(id) {
            // A `create` that died before it saved its state (SIGKILL, OOM kill): the lock is
            // free, so nobody is creating it any more.
            Err(ContainerError::NotExist(_)) if force => return self.remove_unfinished(id),
            l => l?,
        };
        match l.status() {
            Status::Stopped | Status::Created => {}
            s if !force => {
                return Err(ContainerError::NotStopped {
                    id: id.to_string(),
                    status: s,
                })
            }
            _ => {}
        }
        self.destroy(&l);
        Ok(())
    }

    /// `delete --force` of a container whose `create` died before saving state.json: its
    /// cgroups are found from the config it kept (saved before the clone), every process in
    /// them is killed (an init cloned before them exits once the runtime's channel end closed),
    /// then the cgroups and the state directory are removed.
    fn remove_unfinished(&self, id: &str) -> Result<(), ContainerError> {
        let dir = self.dir(id)?;
        let Some(spec) = std::fs::read(dir.join(state::CONFIG_FILE))
            .ok()
            .and_then(|b| spec::parse(&b).ok())
        else {
            // Killed before it kept the config, so before it made anything but this directory
            // (a caller that knows where its cgroups go removes them on NotExist).
            let _ = std::fs::remove_dir_all(&dir);
            return Err(ContainerError::NotExist(id.to_string()));
        };
        let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        if let Ok(cg) = Cgroup::resolve(cgroups_path.as_deref(), id) {
            for _ in 0..200 {
                let pids = cg.pids().unwrap_or_default();
                if pids.is_empty() {
                    break;
                }
                for p in pids {
                    let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            // `created` is not known (it was in the lost state): the leaves go, parents stay
            // (they may be shared).
            for d in cg.paths() {
                let _ = std::fs::remove_dir(d);
            }
        }
        std::fs::remove_dir_all(&dir).map_err(io("remove state directory", &dir))
    }

    /// Kills whatever is left in the container, removes its cgroup and state, runs poststop.
    fn destroy(&self, l: &Loaded) {
        let _ = l.cg.thaw();
        if state::init_alive(&l.rec) {
            let _ = nix::sys::signal::kill(Pid::from_raw(l.rec.pid), Signal::SIGKILL);
        }
        for _ in 0..200 {
            let pids = l.cg.pids().unwrap_or_default();
            let alive = state::init_alive(&l.rec);
            if pids.is_empty() && !alive {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            // Reap it if it is our child (run); harmless otherwise.
            let _ = nix::sys::wait::waitpid(
                Pid::from_raw(l.rec.pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = l.cg.destroy();
        let spec = l.spec();
        let _ = std::fs::remove_dir_all(&l.dir);
        if let Ok(spec) = spec {
            hooks_poststop(&spec, &l.rec.id, &l.rec.bundle);
        }
    }

    /// `pause`: freezes every process of the container.
    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        let _lock = self.lock(id)?;
        let l = self.load(id)?;
        if l.status() != Status::Running {
            return Err(ContainerError::NotRunning);
        }
        Ok(l.cg.freeze()?)
    }

    /// `resume`: thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        let _lock = self.lock(id)?;
        let l = self.load(id)?;
        if l.status() != Status::Paused {
            return Err(ContainerError::NotPaused);
        }
        Ok(l.cg.thaw()?)
    }

    /// `update`: applies new resource limits.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<(), ContainerError> {
        let _lock = self.lock(id)?;
        let l = self.load(id)?;
        if l.status() == Status::Stopped {
            return Err(ContainerError::NotRunning);
        }
        Ok(l.cg.update(resources)?)
    }

    /// Every pid of the container's cgroup (`ps`).
    pub fn pids(&self, id: &str) -> Result<Vec<i32>, ContainerError> {
        Ok(self.load(id)?.cg.pids()?)
    }

    /// Resource usage (`events --stats` data).
    pub fn stats(&self, id: &str) -> Result<crate::cgroups::Stats, ContainerError> {
        let l = self.load(id)?;
        if l.status() == Status::Stopped {
            return Err(ContainerError::NotRunning);
        }
        Ok(l.cg.stats()?)
    }

    /// `exec`: runs `process` in the container. Detached, returns its pid; otherwise waits and
    /// returns its exit code.
    pub fn exec(
        &self,
        id: &str,
        process: &Process,
        opts: &ExecOptions,
    ) -> Result<i32, ContainerError> {
        let l = self.load(id)?;
        match l.status() {
            Status::Stopped => return Err(ContainerError::ExecStopped),
            Status::Paused => return Err(ContainerError::ExecPaused),
            _ => {}
        }
        let caps = CapSets::from_spec(process.capabilities().as_ref())
            .map_err(|e| ContainerError::Launch(LaunchError::Child(e.to_string())))?;
        let child_err = |e: String| ContainerError::Launch(LaunchError::Child(e));
        let spec = l.spec()?;
        let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(p) => Some(crate::seccomp::compile(p).map_err(|e| child_err(e.to_string()))?),
            None => None,
        };
        let terminal = crate::console::Terminal::for_process(
            process,
            opts.console_socket.as_deref(),
            opts.detach,
        )?;
        let sized;
        let process = if matches!(terminal, crate::console::Terminal::Relay { .. }) {
            let mut p = process.clone();
            terminal.size_process(&mut p);
            sized = p;
            &sized
        } else {
            process
        };
        let cfg = ExecConfig {
            init_pid: l.rec.pid,
            process,
            caps: &caps,
            preserve_fds: opts.preserve_fds,
            seccomp: seccomp.as_ref(),
            console: terminal.container_end(),
        };
        let set = (!opts.detach).then(launch::block_forwarded_signals);
        let pid = launch::spawn_exec(&cfg, &l.cg)?;
        // The process sent the master before it reported ready.
        let master = match terminal.take_master() {
            Ok(m) => m,
            Err(e) => {
                launch::kill_and_reap(pid);
                return Err(e.into());
            }
        };
        if let Some(p) = &opts.pid_file {
            write_pid_file(p, pid)?;
        }
        match (set, master) {
            (None, _) => Ok(pid),
            (Some(set), Some(master)) => Ok(crate::console::relay(master, pid, &set)?),
            (Some(set), None) => Ok(launch::wait_forwarding(pid, &set)),
        }
    }

    /// The bundle's spec of an existing container (for `exec` defaults).
    pub fn spec_of(&self, id: &str) -> Result<Spec, ContainerError> {
        Ok(self.load(id)?.spec()?)
    }
}

/// Releases a created container's init through exec.fifo and waits until the workload's
/// execve took effect: the init keeps the fifo's (close-on-exec) write end until then and
/// writes there why it failed, if it does. An init that died before the release, or failed
/// after it, fails `start` with its cause.
fn release_init(l: &Loaded) -> Result<(), ContainerError> {
    use std::os::fd::AsRawFd;
    let fifo = l.dir.join(EXEC_FIFO);
    // Non-blocking: the open must not wait for an init that is gone.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .map_err(io("open exec fifo", &fifo))?;
    loop {
        let mut pfd = [nix::poll::PollFd::new(
            f.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ready = nix::poll::poll(&mut pfd, nix::poll::PollTimeout::from(100u16))
            .map_err(|e| io("poll exec fifo", &fifo)(e.into()))?;
        if ready > 0 {
            break;
        }
        if !state::init_alive(&l.rec) {
            let _ = std::fs::remove_file(&fifo);
            return Err(ContainerError::Launch(LaunchError::Child(
                "the container's init exited before start released it".into(),
            )));
        }
    }
    let mut b = [0u8; 1];
    let n = f.read(&mut b).map_err(io("read exec fifo", &fifo))?;
    let _ = std::fs::remove_file(&fifo);
    if n == 0 {
        return Err(ContainerError::StartStopped);
    }
    // SAFETY: F_SETFL on an fd we own: back to blocking reads until the init's end closes.
    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
    let mut why = Vec::new();
    f.read_to_end(&mut why)
        .map_err(io("read exec fifo", &fifo))?;
    if why.is_empty() {
        return Ok(());
    }
    Err(ContainerError::Launch(LaunchError::Child(
        String::from_utf8_lossy(&why).into_owned(),
    )))
}

fn create_root_dir(root: &Path) -> Result<(), ContainerError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io("create state root", root))
}

/// The spec's resources plus runc's default device rules: after the spec's own rules, allow
/// mknod of any node, the standard character devices and ptys, and every linux.devices node
/// (without these, a "deny all" rule from the engine would break /dev/null).
pub fn effective_resources(spec: &Spec) -> LinuxResources {
    let linux = spec.linux().as_ref();
    crate::cgroups::with_runc_default_devices(
        linux.and_then(|l| l.resources().as_ref()),
        linux
            .and_then(|l| l.devices().as_deref())
            .unwrap_or_default(),
    )
}

/// Writes a pid file atomically, like runc (engines poll for it).
fn write_pid_file(path: &Path, pid: i32) -> Result<(), ContainerError> {
    let tmp = path.with_extension("strata-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(io("write pid file", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename pid file", path))
}

/// The container's cgroup directories by the name of their hierarchy under /sys/fs/cgroup
/// (what a `cgroup` mount shows inside); "" names a pure cgroup2 host's only hierarchy.
fn cgroup_dirs(cg: &Cgroup) -> Vec<(String, PathBuf)> {
    let name = |p: &Path| {
        p.strip_prefix("/sys/fs/cgroup")
            .ok()
            .and_then(|r| r.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
    };
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for d in &cg.v1 {
        if let Some(n) = name(&d.path) {
            out.push((n, d.path.clone()));
        }
    }
    if let Some(u) = &cg.unified {
        if out.is_empty() {
            out.push((String::new(), u.clone()));
        } else if let Some(n) = name(u) {
            out.push((n, u.clone()));
        }
    }
    out
}

// ---- Call points for issue 3 hooks (engineer "harden" fills these; one function each). ----

/// prestart + createRuntime hooks: in the runtime's namespaces, after the container's
/// namespaces exist and its mounts are done, before pivot_root. An error fails `create`.
fn hooks_create_runtime(spec: &Spec, id: &str, pid: i32, bundle: &Path) -> Result<(), String> {
    crate::hooks::run_runtime_hooks(spec, id, pid, bundle).map_err(|e| e.to_string())
}

/// poststart hooks: after the workload was started; failures are logged, not fatal.
fn hooks_poststart(spec: &Spec, id: &str, pid: i32, bundle: &Path) {
    use crate::hooks::{run_warning_hooks, HookKind};
    run_warning_hooks(HookKind::Poststart, spec, id, Some(pid), bundle);
}

/// poststop hooks: after `delete` removed the container; failures are logged, not fatal.
fn hooks_poststop(spec: &Spec, id: &str, bundle: &Path) {
    use crate::hooks::{run_warning_hooks, HookKind};
    run_warning_hooks(HookKind::Poststop, spec, id, None, bundle);
}
