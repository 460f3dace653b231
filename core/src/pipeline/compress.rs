//! The zstd stage. Multithreaded zstd (worker threads inside libzstd) so compression
//! runs beside hashing and encryption instead of in line with them.

use std::io::{self, Write};

use crate::config::CompressionConfig;

pub type Compressor<W> = zstd::stream::write::Encoder<'static, W>;

pub fn compressor<W: Write>(out: W, config: &CompressionConfig) -> io::Result<Compressor<W>> {
    let mut z = zstd::stream::write::Encoder::new(out, config.level)?;
    if config.workers > 0 {
        z.multithread(config.workers)?;
        let job = u32::try_from(config.job_size.bytes()).unwrap_or(u32::MAX);
        z.set_parameter(zstd::stream::raw::CParameter::JobSize(job))?;
    }
    z.include_checksum(true)?;
    if config.long {
        z.long_distance_matching(true)?;
        z.window_log(27)?;
    }
    Ok(z)
}

/// Decoder for restores; accepts the long-distance window bk may write.
pub fn decompressor<R: io::BufRead>(
    input: R,
) -> io::Result<zstd::stream::read::Decoder<'static, R>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(input)?;
    d.window_log_max(27)?;
    Ok(d)
}
