//! Progress reporting without printing: the library reports, the CLI draws (bars or lines).

use std::io::{self, Read};

/// Receives progress of long steps (copying blobs, unpacking layers). One step runs at a time.
pub trait Progress: Send + Sync {
    /// A step starts; `total` is its size in bytes when known.
    fn begin(&self, _step: &str, _total: Option<u64>) {}
    /// `bytes` more bytes of the current step are done.
    fn advance(&self, _bytes: u64) {}
    /// The current step ended successfully.
    fn end(&self, _step: &str) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// A reader that reports every read to a [`Progress`].
pub(crate) struct ProgressReader<'p, R> {
    pub inner: R,
    pub progress: &'p dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}
