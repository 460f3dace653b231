//! The zstd stage. Multithreaded zstd (worker threads inside libzstd) so compression
//! runs beside hashing and encryption instead of in line with them.

use std::io::{self, Write};

use zstd::stream::raw::{CParameter, Encoder, InBuffer, Operation, OutBuffer};

use super::handoff::WriteBehind;
use crate::config::CompressionConfig;

/// Compresses what it is written into the blocks a `WriteBehind` hands to the next
/// stage. zstd writes its output straight into those blocks: `zstd::stream::write::Encoder`
/// would write it into a buffer of its own first and then copy it over, one more copy of
/// every compressed byte on the busiest thread of a backup.
pub struct Compressor<W: Write + Send + 'static> {
    zstd: Encoder<'static>,
    out: WriteBehind<W>,
}

/// zstd's `overlapLog`: each job begins with 1/2^(9 - n) of the window of the job
/// before it as history.
const OVERLAP_LOG: u32 = 4;
/// Levels up to this one use zstd's fast and dfast strategies.
const FAST_LEVELS: i32 = 4;

pub fn compressor<W: Write + Send + 'static>(
    out: WriteBehind<W>,
    config: &CompressionConfig,
) -> io::Result<Compressor<W>> {
    let mut zstd = Encoder::new(config.level)?;
    if config.workers > 0 {
        zstd.set_parameter(CParameter::NbWorkers(config.workers))?;
        let job = u32::try_from(config.job_size.bytes()).unwrap_or(u32::MAX);
        zstd.set_parameter(CParameter::JobSize(job))?;
        // Each job starts by loading the tail of the previous one into its match tables:
        // 1/8 of the window (256 KiB at level 3) by default, an eighth of a 2 MiB job.
        // 1/32 (64 KiB) costs 2.7% fewer instructions in zstd for 0.08% more output
        // (docs/performance.md). Only at the fast levels (1-4, zstd's fast and dfast
        // strategies), where the overlap buys least; higher levels and `long` are chosen
        // for the ratio, and there zstd keeps more history by default.
        if !config.long && config.level <= FAST_LEVELS {
            zstd.set_parameter(CParameter::OverlapSizeLog(OVERLAP_LOG))?;
        }
    }
    zstd.set_parameter(CParameter::ChecksumFlag(true))?;
    if config.long {
        zstd.set_parameter(CParameter::EnableLongDistanceMatching(true))?;
        zstd.set_parameter(CParameter::WindowLog(27))?;
    }
    Ok(Compressor { zstd, out })
}

impl<W: Write + Send + 'static> Compressor<W> {
    /// Runs one zstd step with output into the block being gathered.
    fn step<T>(
        &mut self,
        op: impl FnOnce(&mut Encoder<'static>, &mut OutBuffer<'_, Vec<u8>>) -> io::Result<T>,
    ) -> io::Result<T> {
        let zstd = &mut self.zstd;
        self.out.fill_with(|block| {
            let filled = block.len();
            op(zstd, &mut OutBuffer::around_pos(block, filled))
        })
    }

    /// Ends the zstd frame and returns the next stage, which still runs: call its
    /// `finish` to wait for it.
    pub fn finish(mut self) -> io::Result<WriteBehind<W>> {
        while self.step(|zstd, out| zstd.finish(out, true))? > 0 {}
        Ok(self.out)
    }
}

impl<W: Write + Send + 'static> Write for Compressor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let mut input = InBuffer::around(data);
        // zstd takes no input while the output it holds does not fit: go on until it
        // has taken some (each step either takes input or fills a block).
        while input.pos() == 0 {
            self.step(|zstd, out| zstd.run(&mut input, out))?;
        }
        Ok(input.pos())
    }

    /// Ends the current zstd block (and, with workers, the current job) so that every
    /// byte written so far is in the next stage's hands.
    fn flush(&mut self) -> io::Result<()> {
        while self.step(|zstd, out| zstd.flush(out))? > 0 {}
        Ok(())
    }
}

/// Decoder for restores; accepts the long-distance window bk may write.
pub fn decompressor<R: io::BufRead>(
    input: R,
) -> io::Result<zstd::stream::read::Decoder<'static, R>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(input)?;
    d.window_log_max(27)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CompressionConfig;
    use crate::pipeline::handoff::{WriteBehind, BLOCK};

    fn roundtrip(config: &CompressionConfig, data: &[u8], write_size: usize) -> Vec<u8> {
        let behind = WriteBehind::spawn("test-zstd", Vec::new(), BLOCK, 2).expect("thread");
        let mut z = compressor(behind, config).expect("encoder");
        for piece in data.chunks(write_size) {
            z.write_all(piece).expect("compresses");
        }
        z.finish()
            .expect("frame ends")
            .finish()
            .expect("all handed over")
    }

    #[test]
    fn every_byte_comes_back_through_the_stock_decoder() {
        // Text-like and incompressible parts, several blocks of output.
        let mut data: Vec<u8> = (0..3_000_000u32)
            .map(|i| b"abcdefgh "[(i % 9) as usize] ^ ((i / 4096) % 3) as u8)
            .collect();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        data.extend((0..3_000_000).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        }));
        for workers in [0, 2] {
            let config = CompressionConfig {
                workers,
                ..CompressionConfig::default()
            };
            for write_size in [1000, 1 << 20] {
                let compressed = roundtrip(&config, &data, write_size);
                let back = zstd::stream::decode_all(&compressed[..]).expect("a valid zstd frame");
                assert!(back == data, "workers {workers}, writes of {write_size}");
            }
        }
    }

    #[test]
    fn an_empty_stream_is_an_empty_frame() {
        let compressed = roundtrip(&CompressionConfig::default(), &[], 1);
        assert!(!compressed.is_empty(), "a frame header at least");
        assert!(zstd::stream::decode_all(&compressed[..])
            .expect("valid")
            .is_empty());
    }
}
