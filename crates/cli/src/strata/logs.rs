//! `strata logs`: prints a container's log (strata-engine's container_log.rs writes it) back,
//! stdout and stderr to their own streams.

use std::io::{BufRead, Seek, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use strata_engine::container_log::LogLine;
use strata_engine::records::State;

use super::global_args::Global;

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Keep printing new output until the container exits
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines
    #[arg(long)]
    pub tail: Option<usize>,
    /// Prefix each line with its time
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Container (name, id or id prefix)
    pub container: String,
}

pub fn logs(g: &Global, a: LogsArgs) -> anyhow::Result<()> {
    let containers = g.paths().containers();
    let rec = containers.find(&a.container)?;
    let path = containers.log_path(&rec.id);
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if rec.state == State::Created || rec.auto_remove {
                // Never started, or a foreground `run --rm` (not logged: the container is
                // gone when it exits, and the hot path stays free of the relay).
                return Ok(());
            }
            return Err(e).with_context(|| format!("open {}", path.display()));
        }
        Err(e) => return Err(e).with_context(|| format!("open {}", path.display())),
    };
    let mut reader = std::io::BufReader::new(file);
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        if line.ends_with('\n') {
            lines.push(std::mem::take(&mut line));
        } else {
            break;
        }
    }
    // A partial last line (the monitor is writing it) is read again on the next round.
    let mut offset = reader.stream_position()? - line.len() as u64;
    let skip = a.tail.map(|n| lines.len().saturating_sub(n)).unwrap_or(0);
    for l in &lines[skip..] {
        print_line(l, a.timestamps);
    }
    if !a.follow {
        return Ok(());
    }
    loop {
        // Decide before reading, so output written just before the exit is not missed.
        let done = containers
            .load(&rec.id)
            .map(|r| r.live_state() != State::Running)
            .unwrap_or(true);
        let mut f =
            std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        f.seek(std::io::SeekFrom::Start(offset))?;
        let mut r = std::io::BufReader::new(f);
        let mut l = String::new();
        while r.read_line(&mut l)? > 0 {
            if !l.ends_with('\n') {
                break;
            }
            offset += l.len() as u64;
            print_line(&l, a.timestamps);
            l.clear();
        }
        if done {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn print_line(l: &str, timestamps: bool) {
    let Ok(line) = serde_json::from_str::<LogLine>(l) else {
        return;
    };
    let text = if timestamps {
        format!("{} {}", line.time, line.log)
    } else {
        line.log
    };
    if line.stream == "stderr" {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(text.as_bytes());
    } else {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(text.as_bytes());
        let _ = o.flush();
    }
}
