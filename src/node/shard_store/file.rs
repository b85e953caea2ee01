//! The shard store's files: names (`<shard id>-<owner tag>`), the header (`BCS1`, owner,
//! lease expiry) and its reading and rewriting, and the disk's free space.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use crate::ids::ShardId;

pub(super) const MAGIC: &[u8; 4] = b"BCS1";
/// magic, version, owner length, 2 reserved bytes, then the owner and 32 bytes: the lease
/// expiry (u64 LE, seconds on the node's clock), then reserved.
pub(super) const FIXED_HEADER: usize = 8;
pub(super) const RESERVED: usize = 32;
/// Free space a put must leave on the disk.
pub(super) const DISK_MARGIN: u64 = 64 << 20;

/// Identifies an owner in file names: 8 bytes of BLAKE3 of its peer id, in hex.
pub(super) fn owner_tag(owner: &[u8]) -> String {
    let h = blake3::hash(owner);
    h.as_bytes()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The length of a shard file's header, from its first bytes.
pub(super) fn header_len(data: &[u8]) -> Option<usize> {
    if data.len() < FIXED_HEADER || &data[..4] != MAGIC || data[4] != 1 {
        return None;
    }
    let h = FIXED_HEADER + data[5] as usize + RESERVED;
    (data.len() >= h).then_some(h)
}

/// A shard file's header length and lease expiry (0: written before leases).
pub(super) fn read_header(path: &Path) -> Option<(usize, u64)> {
    let mut f = File::open(path).ok()?;
    let mut head = [0u8; FIXED_HEADER + 255 + RESERVED];
    let n = read_up_to(&mut f, &mut head).ok()?;
    let h = header_len(&head[..n])?;
    let expires = u64::from_le_bytes(head[h - RESERVED..h - RESERVED + 8].try_into().ok()?);
    Some((h, expires))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Writes a copy's lease expiry into its header, in place.
pub(super) fn write_expiry(path: &Path, expires: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = fs::OpenOptions::new().read(true).write(true).open(path)?;
    let mut head = [0u8; FIXED_HEADER];
    f.read_exact_at(&mut head, 0)?;
    if &head[..4] != MAGIC || head[4] != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a shard file",
        ));
    }
    f.write_all_at(
        &expires.to_le_bytes(),
        (FIXED_HEADER + head[5] as usize) as u64,
    )
}

pub(super) fn parse_name(name: &str) -> Option<(ShardId, String)> {
    let (hex, owner) = name.split_once('-')?;
    (owner.len() == 16 && owner.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| ShardId::from_hex(hex).map(|id| (id, owner.to_string())))
        .flatten()
}

/// Bytes available to us on the filesystem holding `dir`.
pub(super) fn free_space(dir: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}
