//! The fsync journal: what makes `fsync` of a file cheap.
//!
//! Without it, fsync seals every dirty block of the file (a whole block re-encrypted and
//! written for a 4 KiB change) and then makes the whole volume durable (block files synced,
//! a durable redb commit): ~2 ms on this hardware, where ext4 needs ~0.4. With it, fsync
//! appends what changed in the file since its last fsync to this journal and syncs that one
//! file; the blocks are sealed later, coalesced, by the next checkpoint.
//!
//! The journal is a file of frames `magic ‖ len ‖ epoch ‖ seq ‖ ciphertext ‖ tag`, each
//! sealed with ChaCha20-Poly1305 under a key derived from the identity (nonce: epoch and
//! seq; the header is the associated data), so contents never reach the disk in clear and a
//! torn or foreign frame is never replayed. Records (`Record`) say what to re-apply: byte
//! ranges written, committed block-map slots, a truncation, the final size and times.
//! One fsync's records are one group: the top bit of `len` marks its last frame, and a
//! replay applies a group only when that frame is read, so a crash in the middle of an
//! append (a kill -9 can cut a write short; a power loss can keep any of its pages) leaves
//! the file as at its previous fsync, never at a mix of the two. (Frames of the first
//! format, magic `BCJ1`, each stood alone and are read as one-frame groups.)
//!
//! Epochs: every durable commit of the volume (checkpoint, slow fsync, unmount) first seals
//! the dirty blocks of every journalled file, then commits durably with the journal epoch
//! `E` recorded in the superblock, then starts epoch `E+1` at the start of the file. On open,
//! frames of an epoch at or below the recorded one are already in the database and skipped;
//! the rest are replayed in order, so a crash anywhere leaves either the old or the new state.
//! The file is kept allocated (it only grows), so an append changes no file size and its
//! `fdatasync` writes only data.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use parking_lot::{Mutex, MutexGuard};
use zeroize::Zeroizing;

use super::{Result, VolumeError};
use crate::ids::{BlockId, InodeNo};
use crate::meta::codec::{BlockRecord, Timestamp};
use crate::store::StoreError;

const MAGIC: [u8; 4] = *b"BCJ2";
/// Frames written before records were grouped: each is a group of its own.
const MAGIC_UNGROUPED: [u8; 4] = *b"BCJ1";
/// Set in a frame's `len` field: the last frame of its group.
const GROUP_END: u32 = 1 << 31;
/// magic, len u32, epoch u64, seq u64.
const HEADER: usize = 4 + 4 + 8 + 8;
const TAG: usize = 16;
/// Largest record accepted when reading (a write range is at most one block).
const MAX_RECORD: usize = 64 << 20;
/// The journal file grows in steps of this much, allocated ahead.
const GROW_BY: u64 = 4 << 20;

/// One change to re-apply at replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Record {
    /// Bytes written at `offset`.
    Write {
        ino: InodeNo,
        offset: u64,
        data: Vec<u8>,
    },
    /// A block-map slot as committed (None: a hole), with the sealed bytes of inline blocks,
    /// and the valid length a truncation left it.
    Slot {
        ino: InodeNo,
        index: u64,
        block: Option<(BlockId, BlockRecord, Option<Vec<u8>>)>,
        clip: Option<u32>,
    },
    /// The file was truncated to this size (its smallest since the previous record).
    Truncate { ino: InodeNo, size: u64 },
    /// The file's size and times at the fsync.
    Size {
        ino: InodeNo,
        size: u64,
        mtime: Timestamp,
        ctime: Timestamp,
    },
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        let ts = |out: &mut Vec<u8>, t: &Timestamp| {
            out.extend_from_slice(&t.secs.to_le_bytes());
            out.extend_from_slice(&t.nanos.to_le_bytes());
        };
        match self {
            Record::Write { ino, offset, data } => {
                out.push(1);
                out.extend_from_slice(&ino.0.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(data);
            }
            Record::Slot {
                ino,
                index,
                block,
                clip,
            } => {
                out.push(2);
                out.extend_from_slice(&ino.0.to_le_bytes());
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&clip.map_or(u32::MAX, |c| c).to_le_bytes());
                if let Some((id, rec, inline)) = block {
                    out.push(1);
                    out.extend_from_slice(&id.0);
                    let r = rec.encode();
                    out.extend_from_slice(&(r.len() as u32).to_le_bytes());
                    out.extend_from_slice(&r);
                    if let Some(bytes) = inline {
                        out.extend_from_slice(bytes);
                    }
                } else {
                    out.push(0);
                }
            }
            Record::Truncate { ino, size } => {
                out.push(3);
                out.extend_from_slice(&ino.0.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
            }
            Record::Size {
                ino,
                size,
                mtime,
                ctime,
            } => {
                out.push(4);
                out.extend_from_slice(&ino.0.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
                ts(out, mtime);
                ts(out, ctime);
            }
        }
    }

    fn decode(b: &[u8]) -> Option<Record> {
        let u64_at = |b: &[u8], at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        let ts_at = |b: &[u8], at: usize| -> Option<Timestamp> {
            Some(Timestamp {
                secs: u64_at(b, at)? as i64,
                nanos: u32::from_le_bytes(b.get(at + 8..at + 12)?.try_into().ok()?),
            })
        };
        let ino = InodeNo(u64_at(b, 1)?);
        Some(match *b.first()? {
            1 => Record::Write {
                ino,
                offset: u64_at(b, 9)?,
                data: b.get(17..)?.to_vec(),
            },
            2 => {
                let index = u64_at(b, 9)?;
                let clip = u32::from_le_bytes(b.get(17..21)?.try_into().ok()?);
                let block = match *b.get(21)? {
                    0 => None,
                    1 => {
                        let id = BlockId(b.get(22..54)?.try_into().ok()?);
                        let n = u32::from_le_bytes(b.get(54..58)?.try_into().ok()?) as usize;
                        let rec = BlockRecord::decode(b.get(58..58 + n)?).ok()?;
                        let rest = b.get(58 + n..)?;
                        Some((id, rec, (!rest.is_empty()).then(|| rest.to_vec())))
                    }
                    _ => return None,
                };
                Record::Slot {
                    ino,
                    index,
                    block,
                    clip: (clip != u32::MAX).then_some(clip),
                }
            }
            3 => Record::Truncate {
                ino,
                size: u64_at(b, 9)?,
            },
            4 => Record::Size {
                ino,
                size: u64_at(b, 9)?,
                mtime: ts_at(b, 17)?,
                ctime: ts_at(b, 29)?,
            },
            _ => return None,
        })
    }
}

struct State {
    file: Option<File>,
    epoch: u64,
    seq: u64,
    /// Where the next frame goes.
    end: u64,
    /// Bytes allocated to the file.
    allocated: u64,
    /// Frames appended in this epoch.
    frames: u64,
    /// Frames of earlier epochs on disk that the database does not yet say it holds (found
    /// by a replay): the next durable commit must record an epoch past them.
    replayed: bool,
}

/// The journal of one volume.
pub(super) struct Journal {
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
    state: Mutex<State>,
}

/// The journal held for one fsync or one checkpoint (they never interleave).
pub(super) struct Held<'a> {
    journal: &'a Journal,
    state: MutexGuard<'a, State>,
}

fn io_err(path: &Path, e: std::io::Error) -> VolumeError {
    let code = e.raw_os_error();
    if code == Some(libc::ENOSPC) || code == Some(libc::EDQUOT) {
        return VolumeError::NoSpace;
    }
    VolumeError::Store(StoreError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

fn nonce(epoch: u64, seq: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(epoch as u32).to_le_bytes());
    n[4..].copy_from_slice(&seq.to_le_bytes());
    n
}

impl Journal {
    /// The journal at `path`, continuing after `durable_epoch` (what the database has).
    pub(super) fn new(path: PathBuf, key: [u8; 32], durable_epoch: u64) -> Journal {
        Journal {
            path,
            key: Zeroizing::new(key),
            state: Mutex::new(State {
                file: None,
                epoch: durable_epoch + 1,
                seq: 0,
                end: 0,
                allocated: 0,
                frames: 0,
                replayed: false,
            }),
        }
    }

    pub(super) fn hold(&self) -> Held<'_> {
        Held {
            journal: self,
            state: self.state.lock(),
        }
    }

    /// Every record of a whole group (fsync) of an epoch after `durable_epoch`, in order, and
    /// the last epoch with a frame on disk (groups cut short included: its nonces are used).
    pub(super) fn read_pending(&self, durable_epoch: u64) -> Result<(Vec<Record>, u64)> {
        let mut file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), durable_epoch));
            }
            Err(e) => return Err(io_err(&self.path, e)),
        };
        let aead = ChaCha20Poly1305::new((&*self.key).into());
        let mut out = Vec::new();
        let mut last_epoch = durable_epoch;
        // The records of the group being read: applied once its last frame is.
        let mut group = Vec::new();
        let mut group_epoch = 0;
        let mut header = [0u8; HEADER];
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_err(&self.path, e))?;
        loop {
            if file.read_exact(&mut header).is_err()
                || (header[..4] != MAGIC && header[..4] != MAGIC_UNGROUPED)
            {
                break;
            }
            let len_field = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
            let ends_group = header[..4] == MAGIC_UNGROUPED || len_field & GROUP_END != 0;
            let len = (len_field & !GROUP_END) as usize;
            let epoch = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
            let seq = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
            if len > MAX_RECORD {
                break;
            }
            let mut body = vec![0u8; len + TAG];
            if file.read_exact(&mut body).is_err() {
                break;
            }
            let tag = body.split_off(len);
            if aead
                .decrypt_in_place_detached(
                    (&nonce(epoch, seq)).into(),
                    &header,
                    &mut body,
                    tag[..].into(),
                )
                .is_err()
            {
                break; // torn or foreign: nothing after it was acknowledged
            }
            if epoch <= durable_epoch {
                // Already in the database: a stale frame past the end of the current epoch,
                // so a group still open there was cut short.
                group.clear();
                continue;
            }
            let Some(record) = Record::decode(&body) else {
                tracing::error!(target: "bitcloud::volume", epoch, seq, "undecodable journal record; replay stops here");
                break;
            };
            // Even a group cut short used this epoch's nonces: the next epoch goes past it.
            last_epoch = last_epoch.max(epoch);
            if group_epoch != epoch {
                group.clear(); // a group never spans epochs
                group_epoch = epoch;
            }
            group.push(record);
            if ends_group {
                out.append(&mut group);
            }
        }
        if !group.is_empty() {
            tracing::warn!(target: "bitcloud::volume", records = group.len(), "the journal ends in an fsync cut short by the crash; its records are not applied");
        }
        Ok((out, last_epoch))
    }
}

impl Held<'_> {
    /// The epoch that records written now belong to.
    pub(super) fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Whether the next durable commit must record this epoch: it has records (whose files
    /// a checkpoint must seal first), or a replay found records of earlier ones.
    pub(super) fn has_frames(&self) -> bool {
        self.state.frames > 0 || self.state.replayed
    }

    /// Appends `records` and syncs them to disk: when this returns, they survive a crash.
    pub(super) fn append(&mut self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let path = self.journal.path.clone();
        let aead = ChaCha20Poly1305::new((&*self.journal.key).into());
        let mut frames = Vec::new();
        let st = &mut *self.state;
        for (i, r) in records.iter().enumerate() {
            let mut body = Vec::new();
            r.encode(&mut body);
            let mut len_field = body.len() as u32;
            if i + 1 == records.len() {
                len_field |= GROUP_END;
            }
            let mut header = [0u8; HEADER];
            header[..4].copy_from_slice(&MAGIC);
            header[4..8].copy_from_slice(&len_field.to_le_bytes());
            header[8..16].copy_from_slice(&st.epoch.to_le_bytes());
            header[16..24].copy_from_slice(&st.seq.to_le_bytes());
            let tag = aead
                .encrypt_in_place_detached((&nonce(st.epoch, st.seq)).into(), &header, &mut body)
                .map_err(|e| VolumeError::Seal(e.to_string()))?;
            st.seq += 1;
            frames.extend_from_slice(&header);
            frames.extend_from_slice(&body);
            frames.extend_from_slice(&tag);
        }
        if st.file.is_none() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            st.allocated = f.metadata().map_err(|e| io_err(&path, e))?.len();
            st.file = Some(f);
        }
        let file = st.file.as_ref().expect("opened above");
        let need = st.end + frames.len() as u64;
        if need > st.allocated {
            let to = need.div_ceil(GROW_BY) * GROW_BY;
            // SAFETY: fallocate on an open descriptor with in-range arguments.
            let rc = unsafe { libc::fallocate(file.as_raw_fd_(), 0, 0, to as i64) };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                // Filesystems without fallocate: the write below extends the file instead.
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    // A failed fallocate may keep what it got: give it back, other writes
                    // (reserved ones among them) need it more.
                    let _ = file.set_len(st.allocated);
                    return Err(io_err(&path, e));
                }
            } else {
                st.allocated = to;
                // The new size must be durable before frames past the old end count on it.
                file.sync_all().map_err(|e| io_err(&path, e))?;
            }
        }
        file.write_all_at(&frames, st.end)
            .map_err(|e| io_err(&path, e))?;
        file.sync_data().map_err(|e| io_err(&path, e))?;
        st.end += frames.len() as u64;
        st.frames += records.len() as u64;
        Ok(())
    }

    /// After a durable commit that recorded [`epoch`](Self::epoch): starts the next epoch at
    /// the start of the file (old frames are skipped by epoch, and overwritten in time).
    pub(super) fn start_next_epoch(&mut self) {
        let st = &mut *self.state;
        st.epoch += 1;
        st.seq = 0;
        st.end = 0;
        st.frames = 0;
        st.replayed = false;
    }

    /// Continues after a replay that found records up to `epoch` (`found`: any at all).
    pub(super) fn resume_after(&mut self, epoch: u64, found: bool) {
        let st = &mut *self.state;
        st.epoch = st.epoch.max(epoch + 1);
        st.seq = 0;
        st.end = 0;
        st.frames = 0;
        st.replayed = found;
    }
}

trait RawFd {
    fn as_raw_fd_(&self) -> i32;
}

impl RawFd for File {
    fn as_raw_fd_(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        vec![
            Record::Write {
                ino: InodeNo(7),
                offset: 12345,
                data: b"hello journal".to_vec(),
            },
            Record::Slot {
                ino: InodeNo(7),
                index: 3,
                block: Some((
                    BlockId([5; 32]),
                    BlockRecord {
                        refcount: 0,
                        plain_len: 9,
                        sealed_len: 200,
                        header_hash: None,
                    },
                    Some(vec![9; 200]),
                )),
                clip: Some(77),
            },
            Record::Slot {
                ino: InodeNo(7),
                index: 4,
                block: None,
                clip: None,
            },
            Record::Truncate {
                ino: InodeNo(7),
                size: 10,
            },
            Record::Size {
                ino: InodeNo(7),
                size: 99,
                mtime: Timestamp { secs: 5, nanos: 6 },
                ctime: Timestamp { secs: 7, nanos: 8 },
            },
        ]
    }

    #[test]
    fn records_round_trip_and_epochs_at_or_below_the_durable_one_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let j = Journal::new(path.clone(), [3; 32], 0);
        {
            let mut h = j.hold();
            assert_eq!(h.epoch(), 1);
            h.append(&records()[..2]).unwrap();
            h.append(&records()[2..]).unwrap();
            assert!(h.has_frames());
        }
        let (got, last) = j.read_pending(0).unwrap();
        assert_eq!(got, records());
        assert_eq!(last, 1);
        assert!(
            j.read_pending(1).unwrap().0.is_empty(),
            "epoch 1 is durable"
        );
        // A new epoch overwrites from the start; the old frames that remain are stale.
        {
            let mut h = j.hold();
            h.start_next_epoch();
            h.append(&records()[4..]).unwrap();
        }
        let (got, last) = j.read_pending(1).unwrap();
        assert_eq!(got, records()[4..].to_vec());
        assert_eq!(last, 2);
        // Another key reads nothing; contents are not in clear.
        assert!(
            Journal::new(path.clone(), [4; 32], 0)
                .read_pending(0)
                .unwrap()
                .0
                .is_empty()
        );
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(7).any(|w| w == b"journal"));
    }

    /// Offsets of the frames in a journal file.
    fn frame_starts(raw: &[u8]) -> Vec<usize> {
        let mut at = 0;
        let mut starts = Vec::new();
        while at + HEADER <= raw.len() && raw[at..at + 4] == MAGIC {
            starts.push(at);
            let len = u32::from_le_bytes(raw[at + 4..at + 8].try_into().unwrap()) & !GROUP_END;
            at += HEADER + len as usize + TAG;
        }
        starts
    }

    #[test]
    fn a_torn_frame_ends_the_replay_and_drops_its_whole_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let j = Journal::new(path.clone(), [3; 32], 0);
        {
            let mut h = j.hold();
            h.append(&records()[..1]).unwrap();
            h.append(&records()[1..]).unwrap();
        }
        let raw = std::fs::read(&path).unwrap();
        let starts = frame_starts(&raw);
        assert_eq!(starts.len(), 5);
        // A byte flipped in the third frame: neither it nor the rest of its group is applied.
        let mut torn = raw.clone();
        torn[starts[2] + HEADER + 1] ^= 1;
        std::fs::write(&path, &torn).unwrap();
        assert_eq!(j.read_pending(0).unwrap().0, records()[..1].to_vec());
        // An append cut short after its third frame (a kill -9 in the write): the same.
        std::fs::write(&path, &raw[..starts[3]]).unwrap();
        assert_eq!(j.read_pending(0).unwrap().0, records()[..1].to_vec());
        // The next epoch's first group cut short where the durable epoch's frames follow.
        let next_path = dir.path().join("next");
        Journal::new(next_path.clone(), [3; 32], 1)
            .hold()
            .append(&records()[..2])
            .unwrap();
        let next = std::fs::read(&next_path).unwrap();
        let mut mixed = next[..frame_starts(&next)[1]].to_vec();
        mixed.extend_from_slice(&raw);
        std::fs::write(&path, &mixed).unwrap();
        assert!(j.read_pending(1).unwrap().0.is_empty());
        std::fs::write(&path, &raw).unwrap();
        assert_eq!(j.read_pending(0).unwrap().0, records());
    }

    #[test]
    fn frames_of_the_ungrouped_format_each_stand_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let j = Journal::new(path.clone(), [3; 32], 0);
        // What the first format wrote: no group bit, magic BCJ1 (authenticated with it).
        let aead = ChaCha20Poly1305::new((&[3u8; 32]).into());
        let mut raw = Vec::new();
        for (seq, r) in records()[..3].iter().enumerate() {
            let mut body = Vec::new();
            r.encode(&mut body);
            let mut header = [0u8; HEADER];
            header[..4].copy_from_slice(&MAGIC_UNGROUPED);
            header[4..8].copy_from_slice(&(body.len() as u32).to_le_bytes());
            header[8..16].copy_from_slice(&1u64.to_le_bytes());
            header[16..24].copy_from_slice(&(seq as u64).to_le_bytes());
            let tag = aead
                .encrypt_in_place_detached((&nonce(1, seq as u64)).into(), &header, &mut body)
                .unwrap();
            raw.extend_from_slice(&header);
            raw.extend_from_slice(&body);
            raw.extend_from_slice(&tag);
        }
        std::fs::write(&path, &raw).unwrap();
        assert_eq!(j.read_pending(0).unwrap().0, records()[..3].to_vec());
    }
}
