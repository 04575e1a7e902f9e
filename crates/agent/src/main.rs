//! The strata-agent binary: PID 1 in a guest, or `--no-pid1 --channel-fd N` on a host.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use strata_agent::{channel, guest, Agent, Mode, Outcome};
use strata_proto::GuestParams;

const USAGE: &str = "usage: strata-agent                      (as PID 1 in a strata guest; reads strata.* from /proc/cmdline)
       strata-agent --no-pid1 --channel-fd N | --channel DEV [--guest-cmdline 'strata.lower=...']
                    (on a host, for tests; --guest-cmdline assembles the guest rootfs under /run/strata:
                     run it in a private mount namespace)
environment: STRATA_AGENT_DEBUG=1 logs to stderr";

struct Args {
    no_pid1: bool,
    channel_fd: Option<i32>,
    channel: Option<String>,
    guest_cmdline: Option<String>,
}

fn parse_args() -> Result<Option<Args>> {
    let mut a = Args {
        no_pid1: false,
        channel_fd: None,
        channel: None,
        guest_cmdline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--no-pid1" => a.no_pid1 = true,
            "--channel-fd" => {
                let v = it
                    .next()
                    .context("--channel-fd needs a file descriptor number")?;
                a.channel_fd = Some(
                    v.parse()
                        .with_context(|| format!("--channel-fd {v:?} is not a number"))?,
                );
            }
            "--channel" => a.channel = Some(it.next().context("--channel needs a device path")?),
            "--guest-cmdline" => {
                a.guest_cmdline = Some(
                    it.next()
                        .context("--guest-cmdline needs strata.* parameters")?,
                )
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--version" => {
                println!("strata-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            // The kernel passes unknown boot parameters to init as arguments: ignore them as PID 1.
            _ if std::process::id() == 1 => {}
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Some(a))
}

fn init_logging(debug: bool) {
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Makes sure fds 0-2 exist so pipes and ptys never land on them (an initramfs without
/// /dev/console starts init with none).
fn ensure_std_fds(pid1: bool) {
    for fd in 0..3 {
        // SAFETY: F_GETFD only checks the fd; open of a constant path with no memory handed over.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                let mut n = -1;
                if pid1 {
                    n = libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
                }
                if n < 0 {
                    n = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                }
                if n >= 0 && n != fd {
                    libc::dup2(n, fd);
                    libc::close(n);
                }
            }
        }
    }
}

fn run_host(args: &Args) -> Result<ExitCode> {
    init_logging(std::env::var_os("STRATA_AGENT_DEBUG").is_some_and(|v| v == "1"));
    let chan: OwnedFd = match (args.channel_fd, &args.channel) {
        (Some(fd), None) => channel::from_fd(fd)?,
        (None, Some(dev)) => channel::open_device(Path::new(dev))?,
        _ => bail!("--no-pid1 needs exactly one of --channel-fd N or --channel DEV"),
    };
    let (guest, assemble_rootfs) = match &args.guest_cmdline {
        Some(c) => (GuestParams::parse(c)?, true),
        None => (GuestParams::default(), false),
    };
    let mode = Mode {
        pid1: false,
        guest,
        assemble_rootfs,
        started_us: None,
        rehearsal_us: None,
    };
    let mut agent = Agent::new(chan, mode)?;
    Ok(match agent.run()? {
        Outcome::Finished => ExitCode::SUCCESS,
        Outcome::ChannelClosed => ExitCode::from(2),
    })
}

fn run_pid1() -> ! {
    // For the host's start-phase split (guest kernel boot | agent set-up before hello).
    let started_us = strata_agent::agent::boot_clock_us();
    let warnings = guest::mount_basics();
    ensure_std_fds(true);
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let params = match GuestParams::parse(&cmdline) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("strata-agent: bad kernel command line: {e}");
            guest::power_off();
        }
    };
    init_logging(params.debug);
    for w in &warnings {
        tracing::warn!("{w}");
    }
    let Some(dev) = params.channel.clone() else {
        eprintln!("strata-agent: no strata.channel=DEV on the kernel command line: nothing to talk to, powering off");
        guest::power_off();
    };
    // A user's kernel may have the drivers as modules, in its initrd (strata's has them built in).
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    for w in strata_agent::modules::load_wanted(&release, &cmdline) {
        eprintln!("strata-agent: {w}");
    }
    // A virtio console appears when its driver has probed, which may finish after init starts.
    channel::wait_for_device(Path::new(&dev), std::time::Duration::from_secs(10));
    let chan = match channel::open_device(Path::new(&dev)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("strata-agent: {e}; powering off");
            guest::power_off();
        }
    };
    // The open fd stays valid; removing the node keeps workloads (which see the same devtmpfs)
    // from opening the host channel by name.
    if let Err(e) = std::fs::remove_file(&dev) {
        tracing::warn!("cannot hide the channel device {dev}: {e}");
    }
    // A pooled VM rehearses one start before its Hello (crate::rehearsal).
    let mut warnings = warnings;
    let mut rehearsal_us = None;
    if let Some(disk) = &params.rehearse {
        match strata_agent::rehearsal::rehearse(disk, std::time::Duration::from_secs(10)) {
            Ok(took) => rehearsal_us = Some(took.as_micros() as u64),
            Err(e) => warnings.push(format!(
                "the pooled VM's rehearsal failed ({e}): its first start is not sped up"
            )),
        }
    }
    let mode = Mode {
        pid1: true,
        guest: params,
        assemble_rootfs: true,
        started_us,
        rehearsal_us,
    };
    match Agent::new(chan, mode) {
        Ok(mut agent) => {
            agent.warn_after_hello(warnings);
            if let Err(e) = agent.run() {
                eprintln!("strata-agent: {e}; powering off");
            }
        }
        Err(e) => eprintln!("strata-agent: {e}; powering off"),
    }
    guest::power_off();
}

fn main() -> ExitCode {
    ensure_std_fds(false);
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata-agent: {e:#}");
            return ExitCode::from(64);
        }
    };
    if args.no_pid1 {
        return match run_host(&args) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("strata-agent: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if std::process::id() != 1 {
        eprintln!(
            "strata-agent: not PID 1; to run it on a host use --no-pid1 --channel-fd N\n{USAGE}"
        );
        return ExitCode::from(64);
    }
    run_pid1()
}
