//! One chunk file: a fixed number of consecutive slots of every series that had a non-zero value
//! in them, written once, whole, and never changed (a rename makes it appear complete).
//!
//! ```text
//! header  32 bytes  magic "ELBHIST1", step u32, slots u16, present u16 (bit i: slot i was
//!                   sampled), start i64 (unix seconds), count u32, reserved u32
//! entries count x   id u32, then slots x METRICS f32 (all little endian), sorted by id
//! ```
//!
//! Entries have one size, so one series is found by a binary search of `pread`s (a 24-hour graph
//! reads a few bytes from each chunk, not the chunks), and a rollup merges chunks by reading them
//! front to back. A series absent from a chunk was zero in its sampled slots; a slot not sampled
//! (the appliance was down) is a gap.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{METRICS, Values};

const MAGIC: &[u8; 8] = b"ELBHIST1";
const HEADER: u64 = 32;

/// A chunk's header: where it lies in time and which of its slots were sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub step: u32,
    pub slots: u16,
    pub present: u16,
    pub start: i64,
    pub count: u32,
}

impl Header {
    fn entry_size(&self) -> u64 {
        4 + u64::from(self.slots) * (METRICS as u64) * 4
    }

    pub fn sampled(&self, slot: usize) -> bool {
        self.present & (1 << slot) != 0
    }

    fn encode(&self) -> [u8; HEADER as usize] {
        let mut b = [0u8; HEADER as usize];
        b[..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.step.to_le_bytes());
        b[12..14].copy_from_slice(&self.slots.to_le_bytes());
        b[14..16].copy_from_slice(&self.present.to_le_bytes());
        b[16..24].copy_from_slice(&self.start.to_le_bytes());
        b[24..28].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER as usize]) -> std::io::Result<Header> {
        if &b[..8] != MAGIC {
            return Err(invalid("not an edgelb history chunk"));
        }
        let h = Header {
            step: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            slots: u16::from_le_bytes(b[12..14].try_into().expect("2 bytes")),
            present: u16::from_le_bytes(b[14..16].try_into().expect("2 bytes")),
            start: i64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
            count: u32::from_le_bytes(b[24..28].try_into().expect("4 bytes")),
        };
        if h.slots == 0 || h.slots > 16 || h.step == 0 {
            return Err(invalid("a history chunk with an impossible header"));
        }
        Ok(h)
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// Writes a chunk: `entries` in increasing id order, each with `header.slots` values. The file
/// appears under `path` only once complete.
pub fn write<'a>(
    path: &Path,
    header: Header,
    entries: impl Iterator<Item = (u32, &'a [Values])>,
) -> std::io::Result<u64> {
    let mut w = Writer::create(path, header)?;
    for (id, values) in entries {
        w.push(id, values)?;
    }
    w.finish()
}

/// A chunk being written, entry by entry (a rollup streams its merge into one).
#[derive(Debug)]
pub struct Writer {
    w: BufWriter<File>,
    header: Header,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Writer {
    pub fn create(path: &Path, header: Header) -> std::io::Result<Writer> {
        let tmp = path.with_extension("tmp");
        let mut w = BufWriter::with_capacity(1 << 16, File::create(&tmp)?);
        w.write_all(&[0u8; HEADER as usize])?;
        Ok(Writer {
            w,
            header: Header { count: 0, ..header },
            tmp,
            path: path.to_owned(),
        })
    }

    /// Adds the next entry (ids increase).
    pub fn push(&mut self, id: u32, values: &[Values]) -> std::io::Result<()> {
        debug_assert_eq!(values.len(), usize::from(self.header.slots));
        self.w.write_all(&id.to_le_bytes())?;
        for v in values {
            for x in v {
                self.w.write_all(&x.to_le_bytes())?;
            }
        }
        self.header.count += 1;
        Ok(())
    }

    /// Completes the file and puts it in place; returns its size.
    pub fn finish(self) -> std::io::Result<u64> {
        let file = self.w.into_inner().map_err(|e| e.into_error())?;
        file.write_all_at(&self.header.encode(), 0)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)?;
        Ok(HEADER + u64::from(self.header.count) * self.header.entry_size())
    }
}

/// A chunk smaller than this is read whole when opened: one read instead of a binary search
/// of `pread`s per series (a page with 50 series reads each chunk once).
const READ_WHOLE: u64 = 256 * 1024;

/// A chunk opened for lookups.
#[derive(Debug)]
pub struct Chunk {
    file: File,
    /// The whole file, when it is small.
    bytes: Option<Vec<u8>>,
    pub header: Header,
}

impl Chunk {
    /// Opens a chunk; `None` when there is none at `path`.
    pub fn open(path: &Path) -> std::io::Result<Option<Chunk>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut b = [0u8; HEADER as usize];
        file.read_exact_at(&mut b, 0)?;
        let header = Header::decode(&b)?;
        let len = file.metadata()?.len();
        let size = HEADER + u64::from(header.count) * header.entry_size();
        if len < size {
            return Err(invalid("a truncated history chunk"));
        }
        let bytes = match size <= READ_WHOLE {
            true => {
                let mut b = vec![0u8; size as usize];
                file.read_exact_at(&mut b, 0)?;
                Some(b)
            }
            false => None,
        };
        Ok(Some(Chunk { file, bytes, header }))
    }

    fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        match &self.bytes {
            Some(b) => {
                let at = at as usize;
                buf.copy_from_slice(
                    b.get(at..at + buf.len())
                        .ok_or_else(|| invalid("a read past a chunk's end"))?,
                );
                Ok(())
            }
            None => self.file.read_exact_at(buf, at),
        }
    }

    fn id_at(&self, i: u32) -> std::io::Result<u32> {
        let mut b = [0u8; 4];
        self.read_at(&mut b, HEADER + u64::from(i) * self.header.entry_size())?;
        Ok(u32::from_le_bytes(b))
    }

    /// The values of series `id`, one per slot; `None` when it was zero throughout.
    pub fn find(&self, id: u32) -> std::io::Result<Option<Vec<Values>>> {
        let (mut lo, mut hi) = (0u32, self.header.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.id_at(mid)?.cmp(&id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let size = self.header.entry_size();
                    let mut b = vec![0u8; (size - 4) as usize];
                    self.read_at(&mut b, HEADER + u64::from(mid) * size + 4)?;
                    return Ok(Some(decode_values(&b)));
                }
            }
        }
        Ok(None)
    }

    /// Reads the entries front to back.
    pub fn entries(self) -> Entries {
        Entries {
            reader: BufReader::with_capacity(1 << 15, self.file),
            header: self.header,
            left: self.header.count,
            started: false,
        }
    }
}

fn decode_values(b: &[u8]) -> Vec<Values> {
    b.chunks_exact(METRICS * 4)
        .map(|slot| {
            let mut v = [0f32; METRICS];
            for (m, x) in slot.chunks_exact(4).enumerate() {
                v[m] = f32::from_le_bytes(x.try_into().expect("4 bytes"));
            }
            v
        })
        .collect()
}

/// A chunk's entries in id order.
#[derive(Debug)]
pub struct Entries {
    reader: BufReader<File>,
    pub header: Header,
    left: u32,
    started: bool,
}

impl Iterator for Entries {
    type Item = std::io::Result<(u32, Vec<Values>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut read = || -> std::io::Result<(u32, Vec<Values>)> {
            if !self.started {
                let mut skip = [0u8; HEADER as usize];
                self.reader.read_exact(&mut skip)?;
                self.started = true;
            }
            let mut b = vec![0u8; self.header.entry_size() as usize];
            self.reader.read_exact(&mut b)?;
            Ok((
                u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
                decode_values(&b[4..]),
            ))
        };
        Some(read())
    }
}
