//! The engine × runtime × layer × operation matrix one test file fills in.
//!
//! A cell is *required* when the runtime is runc (it validates the harness itself) or when it is
//! listed as passing for strata-oci in the test file; a required cell that fails fails the test.
//! Other strata-oci cells are reported as "not yet" and not run — unless STRATA_ENGINES_TRY=1, in
//! which case they run and their outcome (with the runtime calls the engine made) is printed without
//! failing the test: that is how cells are promoted as strata-oci matures.

use super::runtime::Runtime;

/// One operation an engine performs through the runtime.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    /// Foreground run: output and exit code come back.
    Run,
    /// Foreground run with a terminal (`-it` / `-t`).
    Tty,
    /// Detached start, then the engine's logs of that container.
    Logs,
    /// Exec into the running container: output and exit code.
    Exec,
    /// Exec with a terminal.
    ExecTty,
    /// ps / top of the container.
    Ps,
    /// The container's pid lives in the cgroup config.json's `linux.cgroupsPath` names, in every
    /// hierarchy (where the engine and the kubelet look for it).
    Cgroup,
    /// The engine's own statistics (`stats --no-stream`, `ctr task metrics`) report the
    /// container's memory (a VM's: its guest kernel's, several MiB).
    Stats,
    /// pause then unpause, seen in the freezer cgroup.
    Pause,
    /// Raising the memory limit, seen in the cgroup's memory.limit_in_bytes.
    Update,
    /// Graceful stop: SIGTERM reaches the container's handler.
    Stop,
    /// SIGKILL.
    Kill,
    /// Removal: the engine forgets it and its cgroup is gone.
    Rm,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Run => "run",
            Op::Tty => "run -t",
            Op::Logs => "logs",
            Op::Exec => "exec",
            Op::ExecTty => "exec -t",
            Op::Ps => "ps/top",
            Op::Cgroup => "cgroup",
            Op::Stats => "stats memory",
            Op::Pause => "pause/unpause",
            Op::Update => "update memory",
            Op::Stop => "stop",
            Op::Kill => "kill",
            Op::Rm => "rm",
        }
    }
}

/// Container (namespaces + cgroups) or VM (annotation `dev.strata.isolation=vm`) on the default
/// platform (uml here) or on QEMU (`dev.strata.vm.platform=qemu` as well).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Layer {
    Container,
    Vm,
    VmQemu,
}

impl Layer {
    /// Whether the layer is a VM (either platform).
    pub fn is_vm(self) -> bool {
        self != Layer::Container
    }

    /// The bundle annotations (`key=value`) that select this layer.
    pub fn annotations(self) -> &'static [&'static str] {
        match self {
            Layer::Container => &[],
            Layer::Vm => &[super::runtime::VM_ANNOTATION],
            Layer::VmQemu => &[
                super::runtime::VM_ANNOTATION,
                super::runtime::QEMU_ANNOTATION,
            ],
        }
    }

    /// The row label of the summary.
    pub fn label(self) -> &'static str {
        match self {
            Layer::Container => "container",
            Layer::Vm => "vm",
            Layer::VmQemu => "vm-qemu",
        }
    }
}

enum Outcome {
    Pass,
    Fail(String),
    TriedPass,
    TriedFail(String),
    NotYet,
    Skipped(String),
}

struct Row {
    runtime: &'static str,
    layer: Layer,
    op: Op,
    outcome: Outcome,
}

/// Collects cell outcomes for one engine and fails the test at the end if a required cell failed.
pub struct Matrix {
    engine: &'static str,
    rows: Vec<Row>,
    try_all: bool,
}

impl Matrix {
    pub fn new(engine: &'static str) -> Matrix {
        Matrix {
            engine,
            rows: Vec::new(),
            try_all: std::env::var("STRATA_ENGINES_TRY")
                .map(|v| v == "1")
                .unwrap_or(false),
        }
    }

    /// Whether a cell will actually run (required, or STRATA_ENGINES_TRY=1).
    pub fn will_run(&self, rt: &Runtime, passing: &[Op], op: Op) -> bool {
        rt.name == "runc" || passing.contains(&op) || self.try_all
    }

    /// Runs one cell. `passing` lists the strata-oci cells known to pass (ignored for runc).
    pub fn check(
        &mut self,
        rt: &Runtime,
        layer: Layer,
        passing: &[Op],
        op: Op,
        f: impl FnOnce() -> Result<(), String>,
    ) {
        let required = rt.name == "runc" || passing.contains(&op);
        if !required && !self.try_all {
            self.push(rt, layer, op, Outcome::NotYet);
            return;
        }
        let mark = rt.mark();
        let result = f().map_err(|e| {
            format!(
                "{e}\n--- {} calls made by {} during this cell ---\n{}",
                rt.name,
                self.engine,
                rt.calls_since(mark)
            )
        });
        let outcome = match (result, required) {
            (Ok(()), true) => Outcome::Pass,
            (Ok(()), false) => Outcome::TriedPass,
            (Err(e), true) => Outcome::Fail(e),
            (Err(e), false) => Outcome::TriedFail(e),
        };
        self.push(rt, layer, op, outcome);
    }

    /// Records cells that cannot run (the engine has no such command, VM isolation is
    /// unavailable...), with the reason. A strata-oci cell `passing` lists is expected to pass
    /// here, so not running it is a failure; the others are skipped.
    pub fn skip(&mut self, rt: &Runtime, layer: Layer, passing: &[Op], ops: &[Op], reason: &str) {
        for &op in ops {
            let outcome = if rt.name != "runc" && passing.contains(&op) {
                Outcome::Fail(format!("listed as passing, but it could not run: {reason}"))
            } else {
                Outcome::Skipped(reason.to_string())
            };
            self.push(rt, layer, op, outcome);
        }
    }

    fn push(&mut self, rt: &Runtime, layer: Layer, op: Op, outcome: Outcome) {
        let row = Row {
            runtime: rt.name,
            layer,
            op,
            outcome,
        };
        if let Outcome::Fail(e) | Outcome::TriedFail(e) = &row.outcome {
            println!("{}\n{e}\n", self.render(&row));
        }
        self.rows.push(row);
    }

    fn render(&self, r: &Row) -> String {
        let what = match &r.outcome {
            Outcome::Pass => "pass".to_string(),
            Outcome::Fail(_) => "FAIL".to_string(),
            Outcome::TriedPass => "pass (not yet required: add it to the passing list)".to_string(),
            Outcome::TriedFail(_) => "fails (not yet required)".to_string(),
            Outcome::NotYet => "not yet (set STRATA_ENGINES_TRY=1 to try)".to_string(),
            Outcome::Skipped(why) => format!("skipped: {why}"),
        };
        format!(
            "engines: {:<10} {:<10} {:<9} {:<14} {}",
            self.engine,
            r.runtime,
            r.layer.label(),
            r.op.name(),
            what
        )
    }

    /// Prints the summary; panics listing every required cell that failed.
    pub fn finish(self) {
        println!("\n== {} summary ==", self.engine);
        for r in &self.rows {
            println!("{}", self.render(r));
        }
        let failed: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Fail(e) => Some(format!(
                    "{} / {} / {:?} / {}: {e}",
                    self.engine,
                    r.runtime,
                    r.layer,
                    r.op.name()
                )),
                _ => None,
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} required cell(s) failed:\n\n{}",
            failed.len(),
            failed.join("\n\n")
        );
    }
}
