//! fsck against volumes damaged on purpose: every kind of problem it reports is made here,
//! found, and (where it can be) repaired.

use std::sync::Arc;

use super::*;
use crate::keys::VolumeKeys;
use crate::meta::codec::Dirent;
use crate::volume::{Caller, NewNode, OpenFlags, XattrMode};

const ME: Caller = Caller { uid: 1, gid: 1 };
const BS: usize = 64 * 1024;

fn volume() -> (tempfile::TempDir, Arc<Volume>) {
    let dir = tempfile::tempdir().unwrap();
    Volume::create(dir.path(), BS as u32, ME).unwrap();
    let keys = VolumeKeys::derive(age::x25519::Identity::generate());
    let (v, _) = Volume::load(dir.path(), keys, 1).unwrap();
    (dir, v)
}

fn node(v: &Volume, parent: InodeNo, name: &str, kind: Kind, target: Option<&[u8]>) -> InodeNo {
    let new = NewNode {
        kind,
        mode: 0o755,
        rdev: 0,
        target,
    };
    v.create_node(parent, name.as_bytes(), new, ME).unwrap().ino
}

fn write(v: &Volume, ino: InodeNo, data: &[u8]) {
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 0, data).unwrap();
    v.release(fh).unwrap();
}

fn check(v: &Volume, repair: bool, online: bool, verify_data: bool) -> FsckReport {
    let mut phases = Vec::new();
    let opts = FsckOptions {
        verify_data,
        repair,
        online,
    };
    let r = v
        .fsck(opts, &mut |p| {
            assert!(p.done <= p.total, "{p:?}");
            if phases.last() != Some(&p.phase) {
                phases.push(p.phase.clone());
            }
        })
        .unwrap();
    assert_eq!(phases, ["metadata", "data", "store"]);
    r
}

fn kinds(r: &FsckReport) -> Vec<ProblemKind> {
    let mut k: Vec<_> = r.problems.iter().map(|p| p.kind).collect();
    k.sort_by_key(|k| format!("{k:?}"));
    k
}

/// A volume with a bit of everything: directories, big and inline blocks, a shared block, a
/// hard link, a symlink, an xattr. Returns it and the inode of /docs/big.
fn populated() -> (tempfile::TempDir, Arc<Volume>, InodeNo) {
    let (d, v) = volume();
    let docs = node(&v, InodeNo::ROOT, "docs", Kind::Dir, None);
    let big = node(&v, docs, "big", Kind::File, None);
    let data: Vec<u8> = (0..3 * BS + 100).map(|i| (i % 253) as u8).collect();
    write(&v, big, &data);
    let copy = node(&v, InodeNo::ROOT, "copy", Kind::File, None);
    write(&v, copy, &data[..BS]); // shares block 0 with big
    let small = node(&v, docs, "small", Kind::File, None);
    write(&v, small, b"inline bytes");
    v.link(small, InodeNo::ROOT, b"hardlink").unwrap();
    node(&v, docs, "sym", Kind::Symlink, Some(b"../copy"));
    v.setxattr(small, b"user.tag", b"blue", XattrMode::Any)
        .unwrap();
    v.checkpoint().unwrap();
    (d, v, big)
}

#[test]
fn a_healthy_volume_has_no_problems() {
    let (_d, v, _) = populated();
    let r = check(&v, false, false, true);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.files, r.directories), (3, 2));
    assert_eq!(
        r.blocks, 5,
        "4 of big (one shared with copy) + the inline one"
    );
    assert!(r.bytes_verified > 3 * BS as u64);
    assert!(r.render().contains("no problems found"));
}

#[test]
fn damaged_and_missing_blocks_name_the_files_that_use_them() {
    let (_d, v, big) = populated();
    let snap = v.meta().read().unwrap();
    let b0 = snap.block_at(big, 0).unwrap().unwrap();
    let b2 = snap.block_at(big, 2).unwrap().unwrap();
    drop(snap);
    // Flip one byte in the middle of block 0 (shared by /copy) and delete block 2.
    let p0 = v.store().path_of(&b0);
    let mut bytes = std::fs::read(&p0).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&p0, bytes).unwrap();
    std::fs::remove_file(v.store().path_of(&b2)).unwrap();

    let r = check(&v, true, false, true);
    assert_eq!(
        kinds(&r),
        [ProblemKind::DamagedBlock, ProblemKind::MissingBlock]
    );
    let damaged = r
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::DamagedBlock)
        .unwrap();
    let mut paths = damaged.paths.clone();
    paths.sort();
    assert_eq!(paths, ["/copy (bytes 0 ..)", "/docs/big (bytes 0 ..)"]);
    let missing = r
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::MissingBlock)
        .unwrap();
    assert_eq!(missing.paths, [format!("/docs/big (bytes {} ..)", 2 * BS)]);
    assert_eq!(r.unrepaired(), 2, "no other copy: --repair cannot fix data");
    assert!(r.render().contains("restore the files"));

    // --quick sees the missing block but not a flipped payload byte.
    let q = check(&v, false, false, false);
    assert_eq!(kinds(&q), [ProblemKind::MissingBlock]);
    assert_eq!(q.bytes_verified, 0);
}

#[test]
fn metadata_problems_are_found_then_repaired_offline_only() {
    let (_d, v, big) = populated();
    let b1 = v.meta().read().unwrap().block_at(big, 1).unwrap().unwrap();
    let mut tx = v.meta().write().unwrap();
    tx.fix_refcount(&b1, 7).unwrap();
    let mut inode = tx.inode(big).unwrap().unwrap();
    inode.nlink = 3;
    tx.put_inode(big, &inode).unwrap();
    let ghost = Dirent {
        child: InodeNo(999),
        kind: Kind::File,
        sealed_name: vec![1, 2, 3],
    };
    tx.put_dirent(InodeNo::ROOT, &[9; 16], &ghost).unwrap();
    tx.commit().unwrap();
    let stray = BlockId([0xab; 32]);
    v.store().put(&stray, b"left by a crash").unwrap();

    let found = check(&v, false, false, true);
    assert_eq!(
        kinds(&found),
        [
            ProblemKind::DanglingEntry,
            ProblemKind::LinkCount,
            ProblemKind::RefcountMismatch,
            ProblemKind::StrayBlockFile
        ]
    );
    assert!(found.problems.iter().all(|p| !p.repaired));
    let link = found
        .problems
        .iter()
        .find(|p| p.kind == ProblemKind::LinkCount)
        .unwrap();
    assert_eq!(link.paths, ["/docs/big"]);

    // While mounted only the stray file may go: metadata is live.
    let online = check(&v, true, true, true);
    assert_eq!(online.unrepaired(), 3);
    assert!(!v.store().contains(&stray));
    assert!(
        online
            .render()
            .contains("Unmount, then run `bitcloud fsck --repair`")
    );

    let fixed = check(&v, true, false, true);
    assert_eq!(fixed.problems.len(), 3);
    assert_eq!(fixed.unrepaired(), 0);
    let again = check(&v, false, false, true);
    assert!(again.problems.is_empty(), "{:?}", again.problems);
    assert_eq!(v.getattr(big).unwrap().inode.nlink, 1);
    assert_eq!(
        v.read(big, BS as u64, 10).unwrap(),
        (0..10).map(|i| ((BS + i) % 253) as u8).collect::<Vec<_>>()
    );
}

#[test]
fn a_damaged_name_is_reported() {
    let (_d, v, _) = populated();
    // Re-seal the entry "copy" with a wrong name under the same tag: authentication fails.
    let snap = v.meta().read().unwrap();
    let mut rows = Vec::new();
    snap.each_dirent(|p, t, d| rows.push((p, t, d.unwrap())))
        .unwrap();
    drop(snap);
    let (parent, tag, mut d) = rows
        .into_iter()
        .find(|(p, _, d)| *p == InodeNo::ROOT && d.kind == Kind::File && d.sealed_name.len() == 4)
        .unwrap();
    d.sealed_name[0] ^= 0x20;
    let mut tx = v.meta().write().unwrap();
    tx.put_dirent(parent, &tag, &d).unwrap();
    tx.commit().unwrap();
    let r = check(&v, false, false, true);
    assert_eq!(kinds(&r), [ProblemKind::DamagedName]);
}
