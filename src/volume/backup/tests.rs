//! The metadata backup without a network: dump, chunk, restore, and the rules that keep
//! what a published backup names.

use std::sync::Arc;

use super::*;
use crate::ids::{InodeNo, ShardId};
use crate::meta::codec::Kind;
use crate::meta::placement::{Placement, ShardPlace};
use crate::volume::{Caller, NewNode, OpenFlags};

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

/// A fixed identity (test only): chunk cut points depend on the key, and the tests count
/// chunks.
fn identity() -> age::x25519::Identity {
    "AGE-SECRET-KEY-14QHHLFNKXAHJ7NA8ENQEED5T02DQ27YY47RGHW3PYZV0SF56AP8QKPT26F"
        .parse()
        .unwrap()
}

fn volume_in(dir: &std::path::Path, id: &age::x25519::Identity) -> Arc<Volume> {
    if !dir.join("meta.redb").exists() {
        Volume::create(dir, 64 * 1024, ME).unwrap();
    }
    let keys = VolumeKeys::derive(id.clone());
    Volume::load(dir, keys, 2).unwrap().0
}

fn node(v: &Volume, parent: InodeNo, name: &str, kind: Kind, target: Option<&[u8]>) -> InodeNo {
    v.create_node(
        parent,
        name.as_bytes(),
        NewNode {
            kind,
            mode: 0o640,
            rdev: 0,
            target,
        },
        ME,
    )
    .unwrap()
    .ino
}

fn write(v: &Volume, ino: InodeNo, data: &[u8]) {
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 0, data).unwrap();
    v.release(fh).unwrap();
}

/// Records every queued block as placed (on made-up holders): what a backup waits for.
fn place_all(v: &Volume) {
    let queued: Vec<BlockId> = v.meta.read().unwrap().upload_queue(None, 10_000).unwrap();
    for (i, b) in queued.iter().enumerate() {
        v.record_placement(b, &placed((i % 100) as u8 * 2), true)
            .unwrap();
    }
}

/// Every chunk of a dump of `v` taken now (its blocks placed first).
fn dump(v: &Volume) -> Vec<(BlockId, Vec<u8>)> {
    place_all(v);
    let point = v.backup_point().unwrap();
    let mut out = Vec::new();
    v.backup_dump(&point, 1 << 20, |id, plain| {
        out.push((id, plain));
        Ok(())
    })
    .unwrap();
    out
}

/// Names (recursively), with kind, size and mode.
fn listing(v: &Volume, dir: InodeNo, prefix: &str, out: &mut Vec<String>) {
    let entries = v.readdir(dir, 0, usize::MAX, false).unwrap();
    for e in entries {
        let name = String::from_utf8_lossy(&e.name).to_string();
        let a = v.getattr(e.ino).unwrap();
        let path = format!("{prefix}/{name}");
        out.push(format!(
            "{path} {:?} {} {:o}",
            a.inode.kind, a.inode.size, a.inode.perm
        ));
        if a.inode.kind == Kind::Dir {
            listing(v, e.ino, &path, out);
        }
    }
}

#[test]
fn a_restored_backup_has_every_name_attribute_and_block() {
    let id = identity();
    let dir = tempfile::tempdir().unwrap();
    let v = volume_in(dir.path(), &id);
    let d = node(&v, InodeNo::ROOT, "docs", Kind::Dir, None);
    let big = node(&v, d, "big", Kind::File, None);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    write(&v, big, &data);
    let small = node(&v, d, "small", Kind::File, None);
    write(&v, small, b"inline");
    node(&v, d, "link", Kind::Symlink, Some(b"big"));
    let gone = node(&v, InodeNo::ROOT, "gone", Kind::File, None);
    write(&v, gone, &data[..100_000]);
    v.unlink(InodeNo::ROOT, b"gone").unwrap();
    v.checkpoint().unwrap();

    let chunks = dump(&v);
    for (cid, plain) in &chunks {
        assert_eq!(
            *cid,
            chunk_id(&v.keys, plain),
            "a chunk's id is its keyed hash"
        );
        let sealed = v.seal_chunk(plain).unwrap();
        assert_eq!(open_chunk(&v.keys, *cid, &sealed).unwrap(), *plain);
        assert!(open_chunk(&v.keys, BlockId([0; 32]), &sealed).is_err());
    }
    let mut before = Vec::new();
    listing(&v, InodeNo::ROOT, "", &mut before);

    let dir2 = tempfile::tempdir().unwrap();
    let mut pieces = chunks.iter().map(|(_, p)| p.clone());
    let restored = restore(dir2.path(), || Ok(pieces.next()), (7, 3, 1), Vec::new()).unwrap();
    let counts = v.counts().unwrap();
    assert_eq!(
        (
            restored.counts.files,
            restored.counts.dirs,
            restored.counts.logical_bytes
        ),
        (counts.files, counts.dirs, counts.logical_bytes)
    );
    // The blocks are in the pool for a real restore; here, the same files.
    for e in walk(&dir.path().join("blocks")) {
        let rel = e.strip_prefix(dir.path()).unwrap();
        let to = dir2.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&e, &to).unwrap();
    }
    drop(v);
    let v2 = volume_in(dir2.path(), &id);
    let mut after = Vec::new();
    listing(&v2, InodeNo::ROOT, "", &mut after);
    assert_eq!(after, before);
    assert_eq!(v2.read(big, 0, 400_000).unwrap(), data);
    assert_eq!(v2.readlink(node_of(&v2, d, "link")).unwrap(), b"big");
    // An inline block's bytes are not in the backup: without a pool it cannot be read.
    assert!(v2.read(small, 0, 10).is_err());
    let (seq, instance) = v2.backup_seq().unwrap();
    assert_eq!(seq, 7);
    assert!(instance.is_some_and(|i| i != 0));
}

fn node_of(v: &Volume, dir: InodeNo, name: &str) -> InodeNo {
    v.lookup(dir, name.as_bytes()).unwrap().ino
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn one_more_file_changes_few_chunks_of_a_large_dump() {
    let id = identity();
    let dir = tempfile::tempdir().unwrap();
    let v = volume_in(dir.path(), &id);
    let d = node(&v, InodeNo::ROOT, "many", Kind::Dir, None);
    for i in 0..4000 {
        node(&v, d, &format!("f{i:05}"), Kind::File, None);
    }
    let a: Vec<BlockId> = dump(&v).into_iter().map(|(id, _)| id).collect();
    node(&v, d, "one-more", Kind::File, None);
    let b: Vec<BlockId> = dump(&v).into_iter().map(|(id, _)| id).collect();
    assert!(a.len() >= 5, "{} chunks", a.len());
    let new = b.iter().filter(|id| !a.contains(id)).count();
    // The superblock (next inode), the directory's entries, the new inode's rows.
    assert!(new <= 4, "{new} of {} chunks changed", b.len());
}

fn placed(id: u8) -> Placement {
    Placement {
        data: 1,
        parity: 1,
        shard_len: 10,
        shards: (0..2)
            .map(|i| ShardPlace {
                id: ShardId([id + i; 32]),
                holder: Some(vec![9; 38]),
            })
            .collect(),
    }
}

#[test]
fn shards_of_freed_blocks_wait_until_no_kept_backup_names_them() {
    let id = identity();
    let dir = tempfile::tempdir().unwrap();
    let v = volume_in(dir.path(), &id);
    let f = node(&v, InodeNo::ROOT, "f", Kind::File, None);
    write(&v, f, &vec![5u8; 100_000]);
    v.checkpoint().unwrap();
    let blocks: Vec<BlockId> = v.meta.read().unwrap().upload_queue(None, 100).unwrap();
    assert!(!blocks.is_empty());
    for (i, b) in blocks.iter().enumerate() {
        v.record_placement(b, &placed(i as u8 * 2), true).unwrap();
    }
    let releasable = |v: &Volume| v.release_batch(None, 1000).unwrap().rows.len();
    // Backup 1 names the file's blocks.
    let p1 = v.backup_point().unwrap();
    v.record_backup(1, p1.generation, &[]).unwrap();
    // The file goes; its blocks are collected and their shards queued for release.
    v.unlink(InodeNo::ROOT, b"f").unwrap();
    for _ in 0..3 {
        v.checkpoint().unwrap();
    }
    let queued = v.meta.read().unwrap().release_queue(1000).unwrap().len();
    assert_eq!(queued, blocks.len(), "collected blocks queued for release");
    assert_eq!(releasable(&v), 0, "backup 1 names them");
    let p2 = v.backup_point().unwrap();
    v.record_backup(2, p2.generation, &[]).unwrap();
    assert_eq!(releasable(&v), 0, "backup 1 is still kept");
    assert!(v.backup_status().unwrap().releases_held > 0);
    let p3 = v.backup_point().unwrap();
    v.record_backup(3, p3.generation, &[]).unwrap();
    assert_eq!(
        releasable(&v),
        blocks.len(),
        "only backups 2 and 3 are kept"
    );
    assert_eq!(v.backup_status().unwrap().releases_held, 0);
}

#[test]
fn chunks_no_kept_backup_uses_are_released() {
    let id = identity();
    let dir = tempfile::tempdir().unwrap();
    let v = volume_in(dir.path(), &id);
    let chunk = |n: u8| MetaChunk {
        last_seq: 0,
        plain_len: 1,
        sealed_len: 2,
        placement: placed(n),
    };
    let (a, b, c) = (BlockId([1; 32]), BlockId([2; 32]), BlockId([3; 32]));
    v.record_meta_chunk(&a, chunk(10)).unwrap();
    v.record_meta_chunk(&b, chunk(20)).unwrap();
    v.record_backup(1, 1, &[a, b]).unwrap();
    v.record_meta_chunk(&c, chunk(30)).unwrap();
    v.record_backup(2, 2, &[b, c]).unwrap();
    let kept = |v: &Volume| {
        let mut ids: Vec<BlockId> = v
            .meta_chunks()
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(kept(&v), vec![a, b, c], "backup 1 is still kept");
    v.record_backup(3, 3, &[c]).unwrap();
    assert_eq!(kept(&v), vec![b, c]);
    let released: Vec<BlockId> = v
        .release_batch(None, 100)
        .unwrap()
        .rows
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    assert_eq!(released, vec![a]);
    // A chunk placed anew (same id, new shards) gives its old shards back once no kept
    // backup can name them.
    v.record_meta_chunk(&c, chunk(40)).unwrap();
    let held = v.meta.read().unwrap().release_queue(100).unwrap();
    assert!(held.iter().any(|(i, s)| *i == c && s.len() == 2));
}

/// The placement rows a dump holds, by block id.
fn dumped_placements(
    v: &Volume,
    point: &BackupPoint,
) -> std::result::Result<std::collections::HashMap<BlockId, Placement>, DumpError> {
    let mut out = std::collections::HashMap::new();
    v.backup_dump(point, 1 << 20, |_, plain| {
        for e in crate::meta::backup::entries(&plain).unwrap() {
            if e.table == crate::meta::backup::T_BLOCKS && e.key[0] == 0x03 {
                let id = BlockId(e.key[1..33].try_into().unwrap());
                out.insert(id, Placement::decode(e.value).unwrap());
            }
        }
        Ok(())
    })?;
    Ok(out)
}

#[test]
fn a_block_freed_and_written_again_keeps_the_placement_the_backup_can_read() {
    let id = identity();
    let dir = tempfile::tempdir().unwrap();
    let v = volume_in(dir.path(), &id);
    let data = vec![7u8; 100_000];
    let f = node(&v, InodeNo::ROOT, "f", Kind::File, None);
    write(&v, f, &data);
    v.checkpoint().unwrap();
    let blocks: Vec<BlockId> = v.meta.read().unwrap().upload_queue(None, 100).unwrap();
    for (i, b) in blocks.iter().enumerate() {
        v.record_placement(b, &placed(i as u8 * 2), true).unwrap();
    }
    let point = v.backup_point().unwrap();
    // Freed and collected, then the same bytes written again: the same block ids, new
    // shards, of which too few are placed yet.
    v.unlink(InodeNo::ROOT, b"f").unwrap();
    for _ in 0..3 {
        v.checkpoint().unwrap();
    }
    let g = node(&v, InodeNo::ROOT, "g", Kind::File, None);
    write(&v, g, &data);
    v.checkpoint().unwrap();
    let partial = Placement {
        data: 2,
        parity: 1,
        shard_len: 10,
        shards: (0..3)
            .map(|i| ShardPlace {
                id: ShardId([100 + i; 32]),
                holder: (i == 0).then(|| vec![9; 38]),
            })
            .collect(),
    };
    for b in &blocks {
        v.record_placement(b, &partial, false).unwrap();
    }
    let got = dumped_placements(&v, &point).unwrap();
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(
            got[b],
            placed(i as u8 * 2),
            "the placement the point can be read from"
        );
    }
}

#[test]
fn a_dump_naming_a_block_no_longer_in_the_pool_is_stale() {
    let id = identity();
    let dir = tempfile::tempdir().unwrap();
    let v = volume_in(dir.path(), &id);
    let h = node(&v, InodeNo::ROOT, "h", Kind::File, None);
    write(&v, h, &vec![3u8; 100_000]);
    v.checkpoint().unwrap();
    // Queued at the point, placed after it, then freed and collected before the dump.
    let point = v.backup_point().unwrap();
    let blocks: Vec<BlockId> = v.meta.read().unwrap().upload_queue(None, 100).unwrap();
    for (i, b) in blocks.iter().enumerate() {
        v.record_placement(b, &placed(i as u8 * 2), true).unwrap();
    }
    assert_eq!(v.backup_readiness(&point).unwrap(), Readiness::Ready);
    v.unlink(InodeNo::ROOT, b"h").unwrap();
    for _ in 0..3 {
        v.checkpoint().unwrap();
    }
    assert!(matches!(
        dumped_placements(&v, &point),
        Err(DumpError::Stale)
    ));
    // A new point does not name it.
    let point = v.backup_point().unwrap();
    assert!(dumped_placements(&v, &point).unwrap().is_empty());
}
