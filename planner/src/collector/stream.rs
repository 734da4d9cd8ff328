//! Frames from an async byte stream (an observer's stdout over SSH), with the same resync rule as
//! `latplan_common::wire::FrameReader`: a bad frame is reported once, then reading resumes at the
//! next frame magic, so one corrupt frame costs its own records (seen as a gap), not the stream.
use latplan_common::wire::{Frame, MAGIC, WireError};
use tokio::io::{AsyncRead, AsyncReadExt};

const READ_CHUNK: usize = 1 << 16;

pub struct AsyncFrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    /// After an error, bytes up to the next good frame are skipped without further errors, so
    /// one corruption is reported once however the bytes arrive.
    resyncing: bool,
    /// Bytes skipped while resynchronising after corruption, in total.
    pub skipped_bytes: u64,
}

impl<R: AsyncRead + Unpin> AsyncFrameReader<R> {
    pub fn new(inner: R) -> Self {
        AsyncFrameReader {
            inner,
            buf: Vec::with_capacity(READ_CHUNK * 2),
            start: 0,
            eof: false,
            resyncing: false,
            skipped_bytes: 0,
        }
    }

    /// The next frame; `Ok(None)` at a clean end of stream. After an error other than `Io`, the
    /// reader has skipped the bad bytes and the next call continues with the following frame.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            match Frame::decode(&self.buf[self.start..]) {
                Ok((frame, used)) => {
                    self.start += used;
                    self.resyncing = false;
                    return Ok(Some(frame));
                }
                Err(WireError::Truncated { .. }) if !self.eof => self.fill().await?,
                Err(WireError::Truncated { need, have }) => {
                    if have == 0 {
                        return Ok(None);
                    }
                    self.skipped_bytes += have as u64;
                    self.start = self.buf.len();
                    return Err(WireError::Truncated { need, have });
                }
                Err(WireError::BadMagic(_)) if self.resyncing => self.resync(),
                Err(e) => {
                    self.resync();
                    self.resyncing = true;
                    return Err(e);
                }
            }
        }
    }

    async fn fill(&mut self) -> Result<(), WireError> {
        if self.start > 0 && self.start * 2 >= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let n = match self.inner.read(&mut self.buf[old..]).await {
            Ok(n) => n,
            Err(e) => {
                self.buf.truncate(old);
                return Err(e.into());
            }
        };
        self.buf.truncate(old + n);
        self.eof = n == 0;
        Ok(())
    }

    /// Skips at least one byte, then up to the next occurrence of the magic (keeping a partial
    /// magic at the end of the buffer, which may complete with the next read).
    fn resync(&mut self) {
        let from = (self.start + 1).min(self.buf.len());
        let next = self.buf[from..]
            .windows(MAGIC.len())
            .position(|w| w == MAGIC)
            .map(|p| from + p)
            .unwrap_or_else(|| self.buf.len().saturating_sub(MAGIC.len() - 1).max(from));
        self.skipped_bytes += (next - self.start) as u64;
        self.start = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latplan_common::wire::{Bye, HEADER_SIZE};

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Samples {
                first_seq: 0,
                samples: vec![],
            },
            Frame::Samples {
                first_seq: 0,
                samples: vec![crate::store::tests::sample(1, 0); 3],
            },
            Frame::Bye(Bye {
                records_total: 3,
                reason: "x".into(),
            }),
        ]
    }

    #[tokio::test]
    async fn reads_frames_split_across_reads_and_resyncs() {
        let mut bytes = Vec::new();
        frames().iter().for_each(|f| f.encode_into(&mut bytes));
        let first = frames()[0].encode().len();
        bytes[first + HEADER_SIZE + 2] ^= 0x55;
        // A reader that hands out 7 bytes at a time.
        let (mut w, r) = tokio::io::duplex(7);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            w.write_all(&bytes).await.unwrap();
        });
        let mut rd = AsyncFrameReader::new(r);
        assert!(matches!(
            rd.next_frame().await,
            Ok(Some(Frame::Samples { .. }))
        ));
        assert!(matches!(rd.next_frame().await, Err(WireError::Checksum)));
        assert!(matches!(rd.next_frame().await, Ok(Some(Frame::Bye(_)))));
        assert!(matches!(rd.next_frame().await, Ok(None)));
        assert!(rd.skipped_bytes > 0);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn every_truncation_ends_in_an_error_then_a_clean_end() {
        let bytes = frames()[1].encode();
        for cut in 1..bytes.len() {
            let mut rd = AsyncFrameReader::new(&bytes[..cut]);
            assert!(rd.next_frame().await.is_err(), "cut at {cut}");
            assert!(matches!(rd.next_frame().await, Ok(None)), "cut at {cut}");
        }
    }
}
