//! strata-oci's VM path: the commands of a bundle that runs in a VM (strata-engine's
//! oci_vm.rs does the work), mapped from runc's flags, their output printed.

use anyhow::Result;
use strata_engine::oci_vm::{self, BundleCreate, BundleExec};
use strata_engine::reap;

use super::args::{Cli, Command, OutputFormat};

/// Handles the command if it concerns a VM; None when it is the container path's.
pub fn dispatch(cli: &Cli) -> Result<Option<i32>> {
    let root = &cli.root;
    let is_vm = |id: &str| oci_vm::exists(root, id);
    let bundle = |a: &super::args::CreateArgs| BundleCreate {
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
    };
    Ok(Some(match &cli.command {
        Command::Create(a) if oci_vm::wants_vm(&a.bundle, cli.vm) => {
            oci_vm::create(root, &a.id, &bundle(a), true)?;
            0
        }
        Command::Run(a) if oci_vm::wants_vm(&a.create.bundle, cli.vm) => {
            let pid = oci_vm::create(root, &a.create.id, &bundle(&a.create), false)?;
            if a.detach {
                0
            } else {
                reap::wait(pid)
            }
        }
        Command::Start(a) if is_vm(&a.id) => {
            oci_vm::start(root, &a.id)?;
            0
        }
        Command::State(a) if is_vm(&a.id) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&oci_vm::state(root, &a.id)?)?
            );
            0
        }
        Command::Kill(a) if is_vm(&a.id) => {
            oci_vm::kill(root, &a.id, super::arg_values::parse_signal(&a.signal)?)?;
            0
        }
        Command::Delete(a) if is_vm(&a.id) => {
            oci_vm::delete(root, &a.id, a.force)?;
            0
        }
        Command::Pause(a) if is_vm(&a.id) => {
            oci_vm::set_paused(root, &a.id, true)?;
            0
        }
        Command::Resume(a) if is_vm(&a.id) => {
            oci_vm::set_paused(root, &a.id, false)?;
            0
        }
        Command::Update(a) if is_vm(&a.id) => {
            oci_vm::update(root, &a.id, &super::arg_values::parse_resources(a)?)?;
            0
        }
        Command::Ps(a) if is_vm(&a.id) => {
            let pids = oci_vm::pids(root, &a.id);
            if a.format == OutputFormat::Json {
                println!("{}", serde_json::to_string(&pids)?);
            } else {
                println!("PID");
                for p in pids {
                    println!("{p}");
                }
            }
            0
        }
        Command::Exec(a) if is_vm(&a.id) => {
            let request = BundleExec {
                process_file: a.process.clone(),
                command: a.command.clone(),
                env: a.env.clone(),
                cwd: a.cwd.clone(),
                user: a.user.clone(),
                tty: a.tty,
                console_socket: a.console_socket.clone(),
                pid_file: a.pid_file.clone(),
            };
            let pid = oci_vm::exec(root, &a.id, &request)?;
            if a.detach {
                0
            } else {
                reap::wait(pid)
            }
        }
        Command::Events(a) if is_vm(&a.id) => {
            let interval = super::arg_values::parse_interval(&a.interval)?;
            loop {
                let stats = oci_vm::stats(root, &a.id)?;
                let ev = serde_json::json!({"type": "stats", "id": a.id, "data": stats});
                println!("{ev}");
                if a.stats {
                    break 0;
                }
                std::thread::sleep(interval);
            }
        }
        _ => return Ok(None),
    }))
}
