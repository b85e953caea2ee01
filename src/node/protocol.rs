//! The shard protocol's messages, byte by byte, and their bounds. Pure: no I/O here, so the
//! decoders can be fuzzed on arbitrary bytes.
//!
//! One request per stream (`/bitcloud/shard/1`): the asker writes a request frame, and for
//! `Put` the shard's bytes after it; the node answers with one response frame, for `Get`
//! followed by the shard's bytes. A frame is `len u32 BE ‖ version u8 ‖ kind u8 ‖ fields`;
//! `len` counts from `version` on and may not exceed [`MAX_FRAME`]; bodies are announced in
//! their frame and may not exceed [`MAX_SHARD`]. Anything else is a protocol error: the
//! stream is dropped and the peer is charged for it.
//!
//! Kinds not yet used are reserved: an older node answers them with
//! `Response::Unsupported`, so asking never breaks a pool.

use super::root::MAX_RECORD;
use crate::ids::ShardId;

/// Version of the messages in this file.
pub const VERSION: u8 = 1;
/// Largest frame (request or response) without its body.
pub const MAX_FRAME: usize = 64 * 1024;
/// Largest shard a node accepts or sends.
pub const MAX_SHARD: u32 = 16 << 20;
/// Most shard ids in one `Has` or `Release`.
pub const MAX_IDS: usize = 1024;

/// What an owner asks of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Store this shard (its `len` bytes follow the frame) for the asker.
    Put { id: ShardId, len: u32 },
    /// Send this shard back.
    Get { id: ShardId },
    /// Which of these does the node hold for the asker?
    Has { ids: Vec<ShardId> },
    /// The asker no longer needs these.
    Release { ids: Vec<ShardId> },
    /// Space offered and used.
    Info,
    /// Prove possession of these 1 KiB chunks of the asker's shard (at most
    /// [`MAX_AUDIT_CHUNKS`](super::proof::MAX_AUDIT_CHUNKS), in increasing order).
    Audit { id: ShardId, chunks: Vec<u32> },
    /// Renew the asker's leases on these (see [`lease`](super::lease)).
    Renew { ids: Vec<ShardId> },
    /// Keep this volume root record (see [`root`](super::root)), at most
    /// [`MAX_RECORD`](super::root::MAX_RECORD) bytes, if it is newer than the one held.
    PutRoot { record: Vec<u8> },
    /// The newest root record held for this locator.
    GetRoot { locator: [u8; 32] },
}

/// Why a node refused a `Put`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node's offer is used up.
    OfferFull,
    /// The node's disk is full.
    DiskFull,
    /// The bytes do not hash to the id.
    BadHash,
    /// Over [`MAX_SHARD`].
    TooBig,
    /// Too many requests from this peer or in total right now; try later.
    Busy,
    /// A root record older than (or conflicting with) the one the node holds.
    Stale,
    /// A root record whose signature does not verify, or too many of them.
    BadRecord,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Refusal::OfferFull => 1,
            Refusal::DiskFull => 2,
            Refusal::BadHash => 3,
            Refusal::TooBig => 4,
            Refusal::Busy => 5,
            Refusal::Stale => 6,
            Refusal::BadRecord => 7,
        }
    }

    fn from_code(c: u8) -> Option<Refusal> {
        Some(match c {
            1 => Refusal::OfferFull,
            2 => Refusal::DiskFull,
            3 => Refusal::BadHash,
            4 => Refusal::TooBig,
            5 => Refusal::Busy,
            6 => Refusal::Stale,
            7 => Refusal::BadRecord,
            _ => return None,
        })
    }

    /// Whether asking again later may work.
    pub fn is_transient(self) -> bool {
        matches!(self, Refusal::Busy | Refusal::DiskFull | Refusal::OfferFull)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::OfferFull => "the node's offered space is used up",
            Refusal::DiskFull => "the node's disk is full",
            Refusal::BadHash => "the shard does not match its id",
            Refusal::TooBig => "the shard is larger than a node accepts",
            Refusal::Busy => "the node is busy",
            Refusal::Stale => "the node holds a newer root record for this volume",
            Refusal::BadRecord => "the root record is not valid here",
        })
    }
}

/// What a node answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The shard is on the node's disk (synced) for the asker.
    Stored,
    Refused(Refusal),
    /// The shard follows (`len` bytes).
    Shard {
        len: u32,
    },
    NotFound,
    /// One bit per asked id, in order: held for the asker.
    Have {
        bits: Vec<u8>,
    },
    Released {
        count: u32,
    },
    Info {
        offered: u64,
        used: u64,
        used_by_asker: u64,
    },
    /// A proof of storage follows (`len` bytes, at most [`MAX_PROOF`](super::proof::MAX_PROOF)).
    Proof {
        len: u32,
    },
    /// Leases renewed for `lease_secs` on this node's clock; one bit per asked id, in
    /// order: held for the asker.
    Renewed {
        lease_secs: u32,
        bits: Vec<u8>,
    },
    /// The root record asked for (its bytes, unverified: the asker checks the signature).
    Root {
        record: Vec<u8>,
    },
    /// A kind this node does not know.
    Unsupported,
}

/// A frame that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad shard-protocol frame: {0}")]
pub struct FrameError(pub &'static str);

const REQ_PUT: u8 = 1;
const REQ_GET: u8 = 2;
const REQ_HAS: u8 = 3;
const REQ_RELEASE: u8 = 4;
const REQ_INFO: u8 = 5;
const REQ_AUDIT: u8 = 6;
const REQ_RENEW: u8 = 7;
const REQ_PUT_ROOT: u8 = 8;
const REQ_GET_ROOT: u8 = 9;
// 10..=15: reserved.

const RSP_STORED: u8 = 1;
const RSP_REFUSED: u8 = 2;
const RSP_SHARD: u8 = 3;
const RSP_NOT_FOUND: u8 = 4;
const RSP_HAVE: u8 = 5;
const RSP_RELEASED: u8 = 6;
const RSP_INFO: u8 = 7;
const RSP_UNSUPPORTED: u8 = 8;
const RSP_PROOF: u8 = 9;
const RSP_RENEWED: u8 = 10;
const RSP_ROOT: u8 = 11;

fn frame(kind: u8, fields: &[u8]) -> Vec<u8> {
    let len = (2 + fields.len()) as u32;
    let mut out = Vec::with_capacity(4 + len as usize);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(fields);
    out
}

fn ids_field(ids: &[ShardId]) -> Vec<u8> {
    let mut f = Vec::with_capacity(2 + 32 * ids.len());
    f.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        f.extend_from_slice(&id.0);
    }
    f
}

fn take_ids(b: &[u8]) -> Result<Vec<ShardId>, FrameError> {
    let n = u16::from_be_bytes(
        b.get(..2)
            .ok_or(FrameError("missing id count"))?
            .try_into()
            .expect("2 bytes"),
    ) as usize;
    if n > MAX_IDS {
        return Err(FrameError("too many ids"));
    }
    let rest = &b[2..];
    if rest.len() != 32 * n {
        return Err(FrameError("id list length"));
    }
    Ok(rest
        .chunks_exact(32)
        .map(|c| ShardId(c.try_into().expect("32 bytes")))
        .collect())
}

fn take_id(b: &[u8]) -> Result<ShardId, FrameError> {
    Ok(ShardId(b.try_into().map_err(|_| FrameError("shard id"))?))
}

/// The length a frame header announces, checked against [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if !(2..=MAX_FRAME).contains(&len) {
        return Err(FrameError("frame length"));
    }
    Ok(len)
}

fn version_kind(b: &[u8]) -> Result<(u8, &[u8]), FrameError> {
    match b {
        [VERSION, kind, rest @ ..] => Ok((*kind, rest)),
        [_, ..] => Err(FrameError("unknown version")),
        [] => Err(FrameError("empty frame")),
    }
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Put { id, len } => {
                let mut f = id.0.to_vec();
                f.extend_from_slice(&len.to_be_bytes());
                frame(REQ_PUT, &f)
            }
            Request::Get { id } => frame(REQ_GET, &id.0),
            Request::Has { ids } => frame(REQ_HAS, &ids_field(ids)),
            Request::Release { ids } => frame(REQ_RELEASE, &ids_field(ids)),
            Request::Info => frame(REQ_INFO, &[]),
            Request::Audit { id, chunks } => {
                let mut f = id.0.to_vec();
                f.extend_from_slice(&(chunks.len() as u16).to_be_bytes());
                for c in chunks {
                    f.extend_from_slice(&c.to_be_bytes());
                }
                frame(REQ_AUDIT, &f)
            }
            Request::Renew { ids } => frame(REQ_RENEW, &ids_field(ids)),
            Request::PutRoot { record } => frame(REQ_PUT_ROOT, record),
            Request::GetRoot { locator } => frame(REQ_GET_ROOT, locator),
        }
    }

    /// Decodes a frame body (after its length). `Ok(None)`: a kind this version does not
    /// know (answer `Unsupported`).
    pub fn decode(b: &[u8]) -> Result<Option<Request>, FrameError> {
        let (kind, f) = version_kind(b)?;
        Ok(Some(match kind {
            REQ_PUT => {
                if f.len() != 36 {
                    return Err(FrameError("put fields"));
                }
                let len = u32::from_be_bytes(f[32..].try_into().expect("4 bytes"));
                Request::Put {
                    id: take_id(&f[..32])?,
                    len,
                }
            }
            REQ_GET => Request::Get { id: take_id(f)? },
            REQ_HAS => Request::Has { ids: take_ids(f)? },
            REQ_RELEASE => Request::Release { ids: take_ids(f)? },
            REQ_INFO if f.is_empty() => Request::Info,
            REQ_INFO => return Err(FrameError("info fields")),
            REQ_AUDIT => {
                if f.len() < 34 {
                    return Err(FrameError("audit fields"));
                }
                let n = u16::from_be_bytes([f[32], f[33]]) as usize;
                let rest = &f[34..];
                if n == 0 || n > super::proof::MAX_AUDIT_CHUNKS || rest.len() != n * 4 {
                    return Err(FrameError("audit chunks"));
                }
                let chunks: Vec<u32> = rest
                    .chunks_exact(4)
                    .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                if chunks.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(FrameError("audit chunks out of order"));
                }
                Request::Audit {
                    id: take_id(&f[..32])?,
                    chunks,
                }
            }
            REQ_RENEW => Request::Renew { ids: take_ids(f)? },
            REQ_PUT_ROOT if !f.is_empty() && f.len() <= MAX_RECORD => {
                Request::PutRoot { record: f.to_vec() }
            }
            REQ_PUT_ROOT => return Err(FrameError("root record length")),
            REQ_GET_ROOT => Request::GetRoot {
                locator: f.try_into().map_err(|_| FrameError("locator"))?,
            },
            10..=15 => return Ok(None),
            _ => return Err(FrameError("unknown request kind")),
        }))
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Stored => frame(RSP_STORED, &[]),
            Response::Refused(r) => frame(RSP_REFUSED, &[r.code()]),
            Response::Shard { len } => frame(RSP_SHARD, &len.to_be_bytes()),
            Response::NotFound => frame(RSP_NOT_FOUND, &[]),
            Response::Have { bits } => frame(RSP_HAVE, bits),
            Response::Released { count } => frame(RSP_RELEASED, &count.to_be_bytes()),
            Response::Info {
                offered,
                used,
                used_by_asker,
            } => {
                let mut f = Vec::with_capacity(24);
                for v in [offered, used, used_by_asker] {
                    f.extend_from_slice(&v.to_be_bytes());
                }
                frame(RSP_INFO, &f)
            }
            Response::Unsupported => frame(RSP_UNSUPPORTED, &[]),
            Response::Proof { len } => frame(RSP_PROOF, &len.to_be_bytes()),
            Response::Renewed { lease_secs, bits } => {
                let mut f = lease_secs.to_be_bytes().to_vec();
                f.extend_from_slice(bits);
                frame(RSP_RENEWED, &f)
            }
            Response::Root { record } => frame(RSP_ROOT, record),
        }
    }

    pub fn decode(b: &[u8]) -> Result<Response, FrameError> {
        let (kind, f) = version_kind(b)?;
        let u32_of = |f: &[u8]| -> Result<u32, FrameError> {
            Ok(u32::from_be_bytes(
                f.try_into().map_err(|_| FrameError("u32 field"))?,
            ))
        };
        Ok(match kind {
            RSP_STORED if f.is_empty() => Response::Stored,
            RSP_REFUSED => match f {
                [c] => Response::Refused(Refusal::from_code(*c).ok_or(FrameError("refusal"))?),
                _ => return Err(FrameError("refusal")),
            },
            RSP_SHARD => {
                let len = u32_of(f)?;
                if len > MAX_SHARD {
                    return Err(FrameError("shard too large"));
                }
                Response::Shard { len }
            }
            RSP_NOT_FOUND if f.is_empty() => Response::NotFound,
            RSP_HAVE if f.len() <= MAX_IDS / 8 => Response::Have { bits: f.to_vec() },
            RSP_RELEASED => Response::Released { count: u32_of(f)? },
            RSP_INFO if f.len() == 24 => {
                let v = |i: usize| u64::from_be_bytes(f[i * 8..i * 8 + 8].try_into().expect("8"));
                Response::Info {
                    offered: v(0),
                    used: v(1),
                    used_by_asker: v(2),
                }
            }
            RSP_UNSUPPORTED if f.is_empty() => Response::Unsupported,
            RSP_RENEWED if (4..=4 + MAX_IDS / 8).contains(&f.len()) => Response::Renewed {
                lease_secs: u32_of(&f[..4])?,
                bits: f[4..].to_vec(),
            },
            RSP_ROOT if !f.is_empty() && f.len() <= MAX_RECORD => {
                Response::Root { record: f.to_vec() }
            }
            RSP_PROOF => {
                let len = u32_of(f)?;
                if len > super::proof::MAX_PROOF {
                    return Err(FrameError("proof too large"));
                }
                Response::Proof { len }
            }
            _ => return Err(FrameError("unknown or malformed response")),
        })
    }
}

/// The bits of a `Have` answer for `n` ids.
pub fn have_bits(held: impl Iterator<Item = bool>, n: usize) -> Vec<u8> {
    let mut bits = vec![0u8; n.div_ceil(8)];
    for (i, h) in held.enumerate() {
        if h {
            bits[i / 8] |= 1 << (i % 8);
        }
    }
    bits
}

/// Whether bit `i` of a `Have` answer is set.
pub fn has_bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn body(frame: &[u8]) -> &[u8] {
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        &frame[4..]
    }

    #[test]
    fn every_message_round_trips() {
        let id = ShardId([7; 32]);
        for r in [
            Request::Put { id, len: 12345 },
            Request::Get { id },
            Request::Has {
                ids: vec![id, ShardId([1; 32])],
            },
            Request::Release { ids: vec![] },
            Request::Info,
            Request::Audit {
                id,
                chunks: vec![0, 5, 300],
            },
            Request::Renew {
                ids: vec![id, ShardId([2; 32])],
            },
            Request::PutRoot {
                record: vec![1, 2, 3],
            },
            Request::GetRoot { locator: [9; 32] },
        ] {
            assert_eq!(Request::decode(body(&r.encode())).unwrap(), Some(r));
        }
        for r in [
            Response::Stored,
            Response::Refused(Refusal::OfferFull),
            Response::Shard { len: 99 },
            Response::NotFound,
            Response::Have { bits: vec![5, 1] },
            Response::Released { count: 3 },
            Response::Info {
                offered: 1,
                used: 2,
                used_by_asker: 3,
            },
            Response::Unsupported,
            Response::Proof { len: 4000 },
            Response::Renewed {
                lease_secs: 86_400,
                bits: vec![3],
            },
            Response::Root {
                record: vec![4; 300],
            },
            Response::Refused(Refusal::Stale),
        ] {
            assert_eq!(Response::decode(body(&r.encode())).unwrap(), r);
        }
        let bits = have_bits([true, false, true].into_iter(), 3);
        assert!(has_bit(&bits, 0) && !has_bit(&bits, 1) && has_bit(&bits, 2) && !has_bit(&bits, 9));
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(frame_len((MAX_FRAME as u32 + 1).to_be_bytes()).is_err());
        assert!(frame_len(1u32.to_be_bytes()).is_err());
        let too_many = Request::Has {
            ids: vec![ShardId([0; 32]); MAX_IDS + 1],
        };
        assert!(Request::decode(&too_many.encode()[4..]).is_err());
        assert!(Response::decode(&[VERSION, RSP_SHARD, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(Request::decode(&[2, REQ_INFO]).is_err(), "unknown version");
        let mut big = vec![VERSION, REQ_PUT_ROOT];
        big.extend(vec![0; MAX_RECORD + 1]);
        assert!(Request::decode(&big).is_err(), "root record over its bound");
        assert_eq!(
            Request::decode(&[VERSION, 10]).unwrap(),
            None,
            "reserved kinds"
        );
    }

    proptest! {
        /// Arbitrary bytes never panic a decoder, and whatever decodes encodes back to itself.
        #[test]
        fn decoders_take_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some(r)) = Request::decode(&b) {
                prop_assert_eq!(Request::decode(&r.encode()[4..]).unwrap(), Some(r));
            }
            if let Ok(r) = Response::decode(&b) {
                prop_assert_eq!(Response::decode(&r.encode()[4..]).unwrap(), r);
            }
            if b.len() >= 4 {
                let _ = frame_len(b[..4].try_into().unwrap());
            }
        }
    }

    /// Valid frames of every kind, then damaged: random bytes are overwritten, the frame is
    /// cut short or extended. Random bytes alone rarely reach past the version and kind.
    fn valid_frame() -> impl Strategy<Value = Vec<u8>> {
        let id = any::<[u8; 32]>().prop_map(ShardId);
        let ids = proptest::collection::vec(id.clone(), 0..20);
        prop_oneof![
            (id.clone(), any::<u32>()).prop_map(|(id, len)| Request::Put { id, len }.encode()),
            id.clone().prop_map(|id| Request::Get { id }.encode()),
            ids.clone().prop_map(|ids| Request::Has { ids }.encode()),
            ids.clone()
                .prop_map(|ids| Request::Release { ids }.encode()),
            ids.prop_map(|ids| Request::Renew { ids }.encode()),
            (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(lease_secs, bits)| Response::Renewed { lease_secs, bits }.encode()),
            Just(Request::Info.encode()),
            (
                id.clone(),
                proptest::collection::btree_set(any::<u32>(), 1..64)
            )
                .prop_map(|(id, c)| Request::Audit {
                    id,
                    chunks: c.into_iter().collect()
                }
                .encode()),
            any::<u32>().prop_map(|len| Response::Proof { len }.encode()),
            (1u8..=7).prop_map(|c| Response::Refused(Refusal::from_code(c).unwrap()).encode()),
            proptest::collection::vec(any::<u8>(), 1..300)
                .prop_map(|record| Request::PutRoot { record }.encode()),
            any::<[u8; 32]>().prop_map(|locator| Request::GetRoot { locator }.encode()),
            proptest::collection::vec(any::<u8>(), 1..300)
                .prop_map(|record| Response::Root { record }.encode()),
            any::<u32>().prop_map(|len| Response::Shard { len }.encode()),
            proptest::collection::vec(any::<u8>(), 0..200)
                .prop_map(|bits| Response::Have { bits }.encode()),
            any::<u32>().prop_map(|count| Response::Released { count }.encode()),
            any::<(u64, u64, u64)>().prop_map(|(offered, used, used_by_asker)| Response::Info {
                offered,
                used,
                used_by_asker
            }
            .encode()),
        ]
    }

    proptest! {
        // A bounded fuzz run in CI: about a second.
        #![proptest_config(ProptestConfig::with_cases(20_000))]
        #[test]
        fn damaged_frames_are_rejected_or_decode_consistently(
            frame in valid_frame(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut b = frame[4..].to_vec();
            for (at, byte) in flips {
                if !b.is_empty() {
                    let i = at.index(b.len());
                    b[i] = byte;
                }
            }
            b.truncate(cut.index(b.len() + 1));
            b.extend(tail);
            if let Ok(Some(r)) = Request::decode(&b) {
                prop_assert_eq!(Request::decode(&r.encode()[4..]).unwrap(), Some(r));
            }
            if let Ok(r) = Response::decode(&b) {
                prop_assert_eq!(Response::decode(&r.encode()[4..]).unwrap(), r);
            }
        }
    }
}
