//! IVF, the simple container libvpx's tools use for VP8: a 32-byte file header (`DKIF`,
//! FourCC, size, timebase, frame count) then per frame a 12-byte header (size, 64-bit pts) and
//! the frame. `--send FILE.ivf` reads it; `--record DIR` writes received video with it.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// The file header fields we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IvfHeader {
    pub fourcc: [u8; 4],
    pub width: u16,
    pub height: u16,
    /// Frames per second as `rate / scale`.
    pub rate: u32,
    pub scale: u32,
    pub frames: u32,
}

/// One stored frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvfFrame {
    pub pts: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum IvfError {
    #[error("not an IVF file (no DKIF signature)")]
    NotIvf,
    #[error("IVF codec is {0:?}, only VP80 (VP8) can be sent")]
    NotVp8(String),
    #[error("IVF frame header says {0} bytes, more than the 16 MiB we accept")]
    FrameTooLarge(u32),
    #[error("IVF file ends inside a frame")]
    Truncated,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The largest frame we read: guards against a corrupt length allocating gigabytes.
const MAX_FRAME: u32 = 16 << 20;

/// Reads frames from an IVF stream.
pub struct IvfReader<R> {
    inner: R,
    header: IvfHeader,
}

impl<R: Read> IvfReader<R> {
    pub fn new(mut inner: R) -> Result<Self, IvfError> {
        let mut h = [0u8; 32];
        inner.read_exact(&mut h).map_err(|_| IvfError::NotIvf)?;
        if &h[0..4] != b"DKIF" {
            return Err(IvfError::NotIvf);
        }
        let header_len = u16::from_le_bytes([h[6], h[7]]) as usize;
        let header = IvfHeader {
            fourcc: [h[8], h[9], h[10], h[11]],
            width: u16::from_le_bytes([h[12], h[13]]),
            height: u16::from_le_bytes([h[14], h[15]]),
            rate: u32::from_le_bytes([h[16], h[17], h[18], h[19]]),
            scale: u32::from_le_bytes([h[20], h[21], h[22], h[23]]),
            frames: u32::from_le_bytes([h[24], h[25], h[26], h[27]]),
        };
        // Skip any header bytes beyond the 32 we know (the length field allows it).
        if header_len > 32 {
            io::copy(&mut (&mut inner).take((header_len - 32) as u64), &mut io::sink())?;
        }
        Ok(Self { inner, header })
    }

    pub fn header(&self) -> IvfHeader {
        self.header
    }

    /// Checks the file holds VP8, the codec we negotiate.
    pub fn require_vp8(&self) -> Result<(), IvfError> {
        if &self.header.fourcc == b"VP80" {
            Ok(())
        } else {
            Err(IvfError::NotVp8(String::from_utf8_lossy(&self.header.fourcc).into_owned()))
        }
    }

    /// The next frame, or `None` at a clean end of file.
    pub fn next_frame(&mut self) -> Result<Option<IvfFrame>, IvfError> {
        let mut fh = [0u8; 12];
        let mut got = 0;
        while got < fh.len() {
            match self.inner.read(&mut fh[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err(IvfError::Truncated),
                n => got += n,
            }
        }
        let size = u32::from_le_bytes([fh[0], fh[1], fh[2], fh[3]]);
        if size > MAX_FRAME {
            return Err(IvfError::FrameTooLarge(size));
        }
        let pts = u64::from_le_bytes([fh[4], fh[5], fh[6], fh[7], fh[8], fh[9], fh[10], fh[11]]);
        let mut data = vec![0u8; size as usize];
        self.inner.read_exact(&mut data).map_err(|_| IvfError::Truncated)?;
        Ok(Some(IvfFrame { pts, data }))
    }
}

impl<R: Read + Seek> IvfReader<R> {
    /// Back to the first frame, so a short file can loop for the whole call.
    pub fn rewind(&mut self) -> Result<(), IvfError> {
        self.inner.seek(SeekFrom::Start(32))?;
        Ok(())
    }
}

/// Writes frames to an IVF stream; `finish` fixes up the frame count.
pub struct IvfWriter<W: Write + Seek> {
    inner: W,
    frames: u32,
}

impl<W: Write + Seek> IvfWriter<W> {
    pub fn new(mut inner: W, header: IvfHeader) -> Result<Self, IvfError> {
        let mut h = Vec::with_capacity(32);
        h.extend_from_slice(b"DKIF");
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&32u16.to_le_bytes());
        h.extend_from_slice(&header.fourcc);
        h.extend_from_slice(&header.width.to_le_bytes());
        h.extend_from_slice(&header.height.to_le_bytes());
        h.extend_from_slice(&header.rate.to_le_bytes());
        h.extend_from_slice(&header.scale.to_le_bytes());
        h.extend_from_slice(&header.frames.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        inner.write_all(&h)?;
        Ok(Self { inner, frames: 0 })
    }

    pub fn write_frame(&mut self, pts: u64, data: &[u8]) -> Result<(), IvfError> {
        self.inner.write_all(&(data.len() as u32).to_le_bytes())?;
        self.inner.write_all(&pts.to_le_bytes())?;
        self.inner.write_all(data)?;
        self.frames += 1;
        Ok(())
    }

    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Writes the final frame count into the header and flushes.
    pub fn finish(mut self) -> Result<W, IvfError> {
        self.inner.seek(SeekFrom::Start(24))?;
        self.inner.write_all(&self.frames.to_le_bytes())?;
        self.inner.seek(SeekFrom::End(0))?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn header() -> IvfHeader {
        IvfHeader { fourcc: *b"VP80", width: 320, height: 240, rate: 30, scale: 1, frames: 0 }
    }

    #[test]
    fn written_frames_read_back_with_count_fixed_up() {
        let mut w = IvfWriter::new(Cursor::new(Vec::new()), header()).unwrap();
        w.write_frame(0, b"first").unwrap();
        w.write_frame(3000, b"second frame").unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let mut r = IvfReader::new(Cursor::new(bytes)).unwrap();
        r.require_vp8().unwrap();
        assert_eq!(r.header(), IvfHeader { frames: 2, ..header() });
        assert_eq!(r.next_frame().unwrap(), Some(IvfFrame { pts: 0, data: b"first".to_vec() }));
        assert_eq!(r.next_frame().unwrap().unwrap().data, b"second frame");
        assert_eq!(r.next_frame().unwrap(), None);
        r.rewind().unwrap();
        assert_eq!(r.next_frame().unwrap().unwrap().pts, 0);
    }

    #[test]
    fn garbage_truncation_and_huge_frames_are_errors_not_panics() {
        assert!(matches!(IvfReader::new(Cursor::new(b"RIFF....".to_vec())), Err(IvfError::NotIvf)));
        let mut w = IvfWriter::new(Cursor::new(Vec::new()), header()).unwrap();
        w.write_frame(0, b"abcdef").unwrap();
        let mut bytes = w.finish().unwrap().into_inner();
        bytes.truncate(bytes.len() - 2);
        let mut r = IvfReader::new(Cursor::new(bytes.clone())).unwrap();
        assert!(matches!(r.next_frame(), Err(IvfError::Truncated)));
        bytes[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = IvfReader::new(Cursor::new(bytes)).unwrap();
        assert!(matches!(r.next_frame(), Err(IvfError::FrameTooLarge(_))));
    }

    #[test]
    fn other_codecs_are_refused() {
        let w = IvfWriter::new(Cursor::new(Vec::new()), IvfHeader { fourcc: *b"AV01", ..header() }).unwrap();
        let r = IvfReader::new(Cursor::new(w.finish().unwrap().into_inner())).unwrap();
        assert!(matches!(r.require_vp8(), Err(IvfError::NotVp8(c)) if c == "AV01"));
    }
}
