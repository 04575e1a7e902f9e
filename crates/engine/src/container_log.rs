//! The container log, `<container dir>/container.log` (Docker's json-file format: one JSON
//! object per output line), written by the monitor of a detached container and by a foreground
//! `strata run` whose container is kept; `strata logs` reads it back.

use std::io::Write;
use std::path::Path;

use crate::records;

/// One line of the log file (Docker's json-file format).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// Which output stream of the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Appends a workload's output to its log: complete lines as they come (flushed per write so
/// `logs -f` sees them), a partial line once its stream ends.
pub struct LogWriter {
    out: std::io::BufWriter<std::fs::File>,
    pending: [Vec<u8>; 2],
}

impl LogWriter {
    /// Opens (creates or appends to) the log file at `path`.
    pub fn open(path: &Path) -> std::io::Result<LogWriter> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LogWriter {
            out: std::io::BufWriter::new(f),
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Output of `stream`.
    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        let p = &mut self.pending[stream as usize];
        p.extend_from_slice(data);
        emit_lines(&mut self.out, stream.as_str(), p, false);
        let _ = self.out.flush();
    }

    /// `stream` ended: its partial last line goes out too.
    pub fn end(&mut self, stream: Stream) {
        let p = &mut self.pending[stream as usize];
        emit_lines(&mut self.out, stream.as_str(), p, true);
        let _ = self.out.flush();
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.end(Stream::Stdout);
        self.end(Stream::Stderr);
    }
}

/// Writes complete lines of `pending` (and the rest at EOF, or when a line grows past 16 KiB
/// as Docker splits them).
pub fn emit_lines(log: &mut impl Write, stream: &str, pending: &mut Vec<u8>, eof: bool) {
    let time = records::now();
    let mut start = 0;
    while let Some(nl) = pending[start..].iter().position(|b| *b == b'\n') {
        write_line(log, stream, &pending[start..start + nl + 1], &time);
        start += nl + 1;
    }
    while pending.len() - start >= 16 * 1024 {
        write_line(log, stream, &pending[start..start + 16 * 1024], &time);
        start += 16 * 1024;
    }
    if eof && start < pending.len() {
        write_line(log, stream, &pending[start..], &time);
        start = pending.len();
    }
    pending.drain(..start);
}

fn write_line(log: &mut impl Write, stream: &str, bytes: &[u8], time: &str) {
    let line = LogLine {
        log: String::from_utf8_lossy(bytes).into_owned(),
        stream: stream.to_string(),
        time: time.to_string(),
    };
    if let Ok(s) = serde_json::to_string(&line) {
        let _ = writeln!(log, "{s}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workload's output is hostile input: random bytes (invalid UTF-8, NULs, escapes,
    /// lines far past the split size) in random chunks must give valid JSON lines whose text,
    /// joined, is the lossy decoding of what was written.
    #[test]
    fn hostile_output_gives_valid_log_lines() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..100 {
            let len = (next() % 70_000) as usize;
            let newline_rate = 1 + next() % 200;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    let r = next();
                    if r % newline_rate == 0 {
                        b'\n'
                    } else {
                        (r >> 8) as u8
                    }
                })
                .collect();
            let mut out = Vec::new();
            let mut pending = Vec::new();
            let mut i = 0;
            while i < data.len() {
                let n = 1 + (next() % 9000) as usize;
                let end = (i + n).min(data.len());
                pending.extend_from_slice(&data[i..end]);
                emit_lines(&mut out, "stdout", &mut pending, false);
                assert!(pending.len() < 16 * 1024);
                i = end;
            }
            emit_lines(&mut out, "stdout", &mut pending, true);
            assert!(pending.is_empty());
            let text = String::from_utf8(out).expect("log is UTF-8");
            let mut bytes = 0;
            for l in text.lines() {
                let line: LogLine = serde_json::from_str(l).expect("every line is JSON");
                assert_eq!(line.stream, "stdout");
                assert!(!line.log.is_empty());
                bytes += line.log.len();
            }
            // Lossy decoding turns each invalid sequence into U+FFFD (3 bytes): never shorter.
            assert!(bytes >= data.len(), "{bytes} of {}", data.len());
        }
    }

    #[test]
    fn lines_are_split_and_partial_lines_wait() {
        let mut out = Vec::new();
        let mut p = b"a\nb\npart".to_vec();
        emit_lines(&mut out, "stdout", &mut p, false);
        assert_eq!(p, b"part");
        emit_lines(&mut out, "stdout", &mut p, true);
        assert!(p.is_empty());
        let lines: Vec<LogLine> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let logs: Vec<&str> = lines.iter().map(|l| l.log.as_str()).collect();
        assert_eq!(logs, ["a\n", "b\n", "part"]);
        let mut out = Vec::new();
        let mut p = vec![b'x'; 40 * 1024];
        emit_lines(&mut out, "stderr", &mut p, false);
        assert_eq!(p.len(), 8 * 1024);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 2);
    }
}
