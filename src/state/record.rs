//! One stored thing per file, checked when read back: a fixed prefix (a magic word naming the
//! kind, the lengths of a head and a body, and a CRC-32 of each), then the head (what the
//! thing is: a few hundred bytes of metadata) and the body. Files are written whole under a
//! temporary name and renamed (see [`super::write_parts_atomically`]); a file cut short (a
//! power loss, a full disk) or with flipped bytes fails the length or checksum test on read,
//! and is never taken for what it was.

use bytes::Bytes;
use std::io::Read;
use std::path::Path;

/// `CPS` + the format's version + the kind of record.
const MAGIC: [u8; 4] = *b"CPS1";
/// Magic (4), kind (4), head length (4), body length (8), head CRC (4), body CRC (4).
pub const PREFIX_LEN: usize = 28;
/// Longest head accepted on read: heads are metadata, a larger one is corruption.
const MAX_HEAD: usize = 4 << 20;

/// A record read back and checked.
#[derive(Debug, Clone)]
pub struct Record {
    /// What the thing is.
    pub head: Bytes,
    /// The thing.
    pub body: Bytes,
}

/// Why a record could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// There is no such file.
    Missing,
    /// Reading failed.
    Io(std::io::Error),
    /// The file is not a whole record of this kind: the reason.
    Corrupt(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing => f.write_str("no such file"),
            ReadError::Io(e) => write!(f, "cannot read: {e}"),
            ReadError::Corrupt(why) => write!(f, "corrupt: {why}"),
        }
    }
}

fn from_io(e: std::io::Error) -> ReadError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ReadError::Missing
    } else {
        ReadError::Io(e)
    }
}

/// Writes a record of `kind` to `path` atomically, its body given in parts.
pub fn write(path: &Path, kind: [u8; 4], head: &[u8], body: &[Bytes], durable: bool) -> std::io::Result<()> {
    let mut crc = crc32fast::Hasher::new();
    let mut body_len = 0u64;
    for part in body {
        crc.update(part);
        body_len += part.len() as u64;
    }
    let head_len = u32::try_from(head.len())
        .ok()
        .filter(|len| (*len as usize) <= MAX_HEAD)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "record head too large"))?;
    let mut prefix = [0u8; PREFIX_LEN];
    prefix[0..4].copy_from_slice(&MAGIC);
    prefix[4..8].copy_from_slice(&kind);
    prefix[8..12].copy_from_slice(&head_len.to_le_bytes());
    prefix[12..20].copy_from_slice(&body_len.to_le_bytes());
    prefix[20..24].copy_from_slice(&crc32fast::hash(head).to_le_bytes());
    prefix[24..28].copy_from_slice(&crc.finalize().to_le_bytes());
    let mut parts: Vec<&[u8]> = Vec::with_capacity(body.len() + 2);
    parts.push(&prefix);
    parts.push(head);
    parts.extend(body.iter().map(|part| part.as_ref()));
    super::write_parts_atomically(path, &parts, durable)
}

/// The lengths and checksums a prefix declares.
struct Prefix {
    head_len: usize,
    body_len: usize,
    head_crc: u32,
    body_crc: u32,
}

fn parse_prefix(bytes: &[u8], kind: [u8; 4], file_len: u64) -> Result<Prefix, ReadError> {
    let field = |range: std::ops::Range<usize>| bytes.get(range).unwrap_or_default();
    if bytes.len() < PREFIX_LEN {
        return Err(ReadError::Corrupt(format!(
            "{} bytes, shorter than a record's prefix",
            bytes.len()
        )));
    }
    if field(0..4) != MAGIC || field(4..8) != kind {
        return Err(ReadError::Corrupt("not a record of this kind or version".into()));
    }
    let u32_at = |at: usize| u32::from_le_bytes(field(at..at + 4).try_into().unwrap_or_default());
    let head_len = u32_at(8) as usize;
    let body_len = u64::from_le_bytes(field(12..20).try_into().unwrap_or_default());
    if head_len > MAX_HEAD {
        return Err(ReadError::Corrupt(format!("declares a {head_len} byte head")));
    }
    let whole = (PREFIX_LEN as u64 + head_len as u64)
        .checked_add(body_len)
        .ok_or_else(|| ReadError::Corrupt(format!("declares a {body_len} byte body")))?;
    if whole != file_len {
        return Err(ReadError::Corrupt(format!(
            "{file_len} bytes where the record declares {whole}"
        )));
    }
    Ok(Prefix {
        head_len,
        body_len: usize::try_from(body_len).map_err(|_| ReadError::Corrupt("body too large".into()))?,
        head_crc: u32_at(20),
        body_crc: u32_at(24),
    })
}

/// Reads the record of `kind` at `path` and checks it whole.
pub fn read(path: &Path, kind: [u8; 4]) -> Result<Record, ReadError> {
    let bytes = Bytes::from(std::fs::read(path).map_err(from_io)?);
    let prefix = parse_prefix(&bytes, kind, bytes.len() as u64)?;
    let head = bytes.slice(PREFIX_LEN..PREFIX_LEN + prefix.head_len);
    let body = bytes.slice(PREFIX_LEN + prefix.head_len..PREFIX_LEN + prefix.head_len + prefix.body_len);
    if crc32fast::hash(&head) != prefix.head_crc {
        return Err(ReadError::Corrupt("the head's checksum does not match".into()));
    }
    if crc32fast::hash(&body) != prefix.body_crc {
        return Err(ReadError::Corrupt("the body's checksum does not match".into()));
    }
    Ok(Record { head, body })
}

/// Reads only the head of the record of `kind` at `path` (checked, and the file's length
/// checked against the record's), for listing what a folder holds without reading bodies.
pub fn read_head(path: &Path, kind: [u8; 4]) -> Result<Bytes, ReadError> {
    let mut file = std::fs::File::open(path).map_err(from_io)?;
    let file_len = file.metadata().map_err(ReadError::Io)?.len();
    let mut prefix_bytes = [0u8; PREFIX_LEN];
    file.read_exact(&mut prefix_bytes)
        .map_err(|_| ReadError::Corrupt(format!("{file_len} bytes, shorter than a record's prefix")))?;
    let prefix = parse_prefix(&prefix_bytes, kind, file_len)?;
    let mut head = vec![0u8; prefix.head_len];
    file.read_exact(&mut head).map_err(ReadError::Io)?;
    if crc32fast::hash(&head) != prefix.head_crc {
        return Err(ReadError::Corrupt("the head's checksum does not match".into()));
    }
    Ok(Bytes::from(head))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: [u8; 4] = *b"test";

    #[test]
    fn a_record_reads_back_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r");
        let body = [Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        write(&path, KIND, b"head", &body, false).expect("write");
        let record = read(&path, KIND).expect("read");
        assert_eq!(&record.head[..], b"head");
        assert_eq!(&record.body[..], b"hello world");
        assert_eq!(&read_head(&path, KIND).expect("head")[..], b"head");
    }

    #[test]
    fn flipped_truncated_or_foreign_files_are_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r");
        write(&path, KIND, b"head", &[Bytes::from_static(b"body bytes")], false).expect("write");
        let good = std::fs::read(&path).expect("read");
        let corrupt = |bytes: &[u8]| {
            std::fs::write(&path, bytes).expect("write");
            match read(&path, KIND) {
                Err(ReadError::Corrupt(why)) => why,
                other => panic!("expected corrupt, got {other:?}"),
            }
        };
        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x20;
        assert!(corrupt(&flipped).contains("body's checksum"));
        let mut head_flipped = good.clone();
        head_flipped[PREFIX_LEN] ^= 1;
        assert!(corrupt(&head_flipped).contains("head's checksum"));
        assert!(corrupt(&good[..good.len() - 3]).contains("declares"));
        assert!(corrupt(&good[..10]).contains("shorter"));
        assert!(corrupt(b"").contains("shorter"));
        assert!(matches!(read(&path, *b"othr"), Err(ReadError::Corrupt(_))));
        std::fs::remove_file(&path).expect("remove");
        assert!(matches!(read(&path, KIND), Err(ReadError::Missing)));
    }
}
