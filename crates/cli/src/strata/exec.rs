//! `strata exec`: another process in a running container, attached to our stdio
//! (strata-engine's exec.rs).

use clap::Args;
use strata_engine::exec::ExecRequest;

use super::global_args::Global;

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Keep stdin open and pass it to the process
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the process a terminal
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Environment variable K=V
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// User (name, uid, name:group or uid:gid)
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container (name, id or id prefix), then the command and its arguments. Options end at
    /// the container name.
    #[arg(
        value_name = "CONTAINER COMMAND [ARG...]",
        required = true,
        num_args = 2..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub container_and_cmd: Vec<String>,
}

/// Whether the exec goes into a VM (its container record says so). Anything else, including a
/// container that cannot be found (exec reports that), takes the container path.
pub fn into_vm(g: &Global, a: &ExecArgs) -> bool {
    a.container_and_cmd.first().is_some_and(|key| {
        strata_engine::records::Containers::new(&g.store)
            .find(key)
            .is_ok_and(|r| r.isolation == "vm")
    })
}

/// Exits with the process's exit code (126/127 when it cannot be started). `protect`: the
/// CVE-2019-5736 re-exec (main.rs), for a container.
pub fn exec(g: &Global, a: ExecArgs, protect: fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut cmd = a.container_and_cmd;
    let key = cmd.remove(0);
    let request = ExecRequest {
        interactive: a.interactive,
        tty: a.tty,
        env: a.env,
        workdir: a.workdir,
        user: a.user,
        cmd,
    };
    let paths = g.paths();
    let rec = paths.containers().find(&key)?;
    // main.rs skipped the CVE-2019-5736 re-exec for a VM: the record used from here on must be
    // one that needs none (a record changed since is a container: re-exec now).
    if rec.isolation != "vm" {
        protect()?;
    }
    let code = strata_engine::exec::exec_in(&paths, rec, &request)?;
    std::process::exit(code)
}
