//! Unit tests of the volume without FUSE: POSIX behaviour at the API level.

use super::*;
use crate::meta::codec::Kind;
use crate::volume::NewNode;

const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn volume(block_size: u32) -> (tempfile::TempDir, Arc<Volume>) {
    let dir = tempfile::tempdir().unwrap();
    Volume::create(dir.path(), block_size, ME).unwrap();
    let keys = VolumeKeys::derive(age::x25519::Identity::generate());
    let (v, _) = Volume::load(dir.path(), keys, 2).unwrap();
    (dir, v)
}

fn file(v: &Volume, name: &str) -> InodeNo {
    v.create_node(
        InodeNo::ROOT,
        name.as_bytes(),
        NewNode {
            kind: Kind::File,
            mode: 0o644,
            rdev: 0,
            target: None,
        },
        ME,
    )
    .unwrap()
    .ino
}

#[test]
fn write_read_at_block_boundaries() {
    let bs = 64 * 1024;
    let (_d, v) = volume(bs as u32);
    for (i, len) in [0usize, 1, bs - 1, bs, bs + 1, 3 * bs + 7]
        .into_iter()
        .enumerate()
    {
        let ino = file(&v, &format!("f{i}"));
        let fh = v.open(ino, OpenFlags::write_only()).unwrap();
        let data: Vec<u8> = (0..len).map(|j| (j % 251) as u8 + 1).collect();
        assert_eq!(v.write(ino, 0, &data).unwrap(), len);
        assert_eq!(
            v.read(ino, 0, len as u32 + 10).unwrap(),
            data,
            "before flush, len {len}"
        );
        v.release(fh).unwrap();
        assert_eq!(v.getattr(ino).unwrap().inode.size, len as u64);
        assert_eq!(
            v.read(ino, 0, len as u32 + 10).unwrap(),
            data,
            "after release, len {len}"
        );
    }
}

#[test]
fn holes_read_as_zeros_and_are_not_stored() {
    let (_d, v) = volume(64 * 1024);
    let ino = file(&v, "sparse");
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 10 << 20, b"tail").unwrap();
    v.release(fh).unwrap();
    let a = v.getattr(ino).unwrap();
    assert_eq!(a.inode.size, (10 << 20) + 4);
    assert_eq!(a.inode.stored_blocks, 1);
    assert!(v.read(ino, 5 << 20, 4096).unwrap().iter().all(|b| *b == 0));
    assert_eq!(v.read(ino, 10 << 20, 10).unwrap(), b"tail");
}

#[test]
fn identical_blocks_are_stored_once_and_freed_when_unreferenced() {
    let (_d, v) = volume(64 * 1024);
    let data = vec![7u8; 64 * 1024 * 3];
    for name in ["a", "b"] {
        let ino = file(&v, name);
        let fh = v.open(ino, OpenFlags::write_only()).unwrap();
        v.write(ino, 0, &data).unwrap();
        v.release(fh).unwrap();
    }
    let c = v.counts().unwrap();
    assert_eq!(c.blocks, 1, "six references to one block");
    assert_eq!(c.referenced_plain_bytes, 6 * 64 * 1024);
    v.unlink(InodeNo::ROOT, b"a").unwrap();
    v.unlink(InodeNo::ROOT, b"b").unwrap();
    // Unlinked inodes are deleted in batches before the next checkpoint, which then frees
    // their blocks.
    assert_eq!(v.checkpoint().unwrap(), 1);
    assert_eq!(v.counts().unwrap().blocks, 0);
    assert!(v.store().list().unwrap().is_empty());
}

#[test]
fn truncate_drops_tail_and_zero_extends() {
    let (_d, v) = volume(64 * 1024);
    let ino = file(&v, "t");
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 0, &vec![9u8; 200_000]).unwrap();
    v.truncate(ino, 70_000).unwrap();
    v.truncate(ino, 150_000).unwrap();
    let back = v.read(ino, 0, 200_000).unwrap();
    assert_eq!(back.len(), 150_000);
    assert!(back[..70_000].iter().all(|b| *b == 9));
    assert!(
        back[70_000..].iter().all(|b| *b == 0),
        "old bytes came back after extension"
    );
    v.release(fh).unwrap();
    assert_eq!(v.read(ino, 0, 200_000).unwrap(), back);
}

#[test]
fn damaged_block_is_an_error_for_that_file_only() {
    let (_d, v) = volume(64 * 1024);
    let good = file(&v, "good");
    let bad = file(&v, "bad");
    for (ino, byte) in [(good, 1u8), (bad, 2u8)] {
        let fh = v.open(ino, OpenFlags::write_only()).unwrap();
        // 64 KiB blocks: block 0 is over INLINE_MAX, so it is a file in the store.
        v.write(ino, 0, &vec![byte; 100_000]).unwrap();
        v.release(fh).unwrap();
    }
    let id = v.meta().read().unwrap().block_at(bad, 0).unwrap().unwrap();
    let path = v.store().path_of(&id);
    let mut sealed = std::fs::read(&path).unwrap();
    let n = sealed.len();
    sealed[n - 5] ^= 0xff;
    std::fs::write(&path, sealed).unwrap();
    v.cache.forget(&id);
    assert!(matches!(
        v.read(bad, 0, 10),
        Err(VolumeError::Corrupt { .. })
    ));
    assert_eq!(v.read(good, 0, 3).unwrap(), vec![1, 1, 1]);
}

#[test]
fn names_are_not_stored_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    Volume::create(dir.path(), 65536, ME).unwrap();
    let keys = VolumeKeys::derive(age::x25519::Identity::generate());
    let (v, _) = Volume::load(dir.path(), keys, 1).unwrap();
    let marker = b"PLAINTEXT-MARKER-name-7f3a";
    let ino = v
        .create_node(
            InodeNo::ROOT,
            marker,
            NewNode {
                kind: Kind::File,
                mode: 0o644,
                rdev: 0,
                target: None,
            },
            ME,
        )
        .unwrap()
        .ino;
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 0, b"PLAINTEXT-MARKER-content-7f3a").unwrap();
    v.release(fh).unwrap();
    v.setxattr(
        ino,
        b"user.PLAINTEXT-MARKER-x",
        b"PLAINTEXT-MARKER-v",
        XattrMode::Any,
    )
    .unwrap();
    v.create_node(
        InodeNo::ROOT,
        b"l",
        NewNode {
            kind: Kind::Symlink,
            mode: 0o777,
            rdev: 0,
            target: Some(b"PLAINTEXT-MARKER-target"),
        },
        ME,
    )
    .unwrap();
    v.shutdown().unwrap();
    drop(v);
    for entry in walk(dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(16).any(|w| w == b"PLAINTEXT-MARKER"),
            "marker in clear in {}",
            entry.display()
        );
    }
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn rename_modes_and_link_counts() {
    let (_d, v) = volume(65536);
    let a = file(&v, "a");
    let b = file(&v, "b");
    assert!(matches!(
        v.rename(
            InodeNo::ROOT,
            b"a",
            InodeNo::ROOT,
            b"b",
            RenameMode::NoReplace
        ),
        Err(VolumeError::Exists)
    ));
    v.rename(
        InodeNo::ROOT,
        b"a",
        InodeNo::ROOT,
        b"b",
        RenameMode::Exchange,
    )
    .unwrap();
    assert_eq!(v.lookup(InodeNo::ROOT, b"b").unwrap().ino, a);
    assert_eq!(v.lookup(InodeNo::ROOT, b"a").unwrap().ino, b);
    v.rename(
        InodeNo::ROOT,
        b"a",
        InodeNo::ROOT,
        b"b",
        RenameMode::Replace,
    )
    .unwrap();
    assert!(matches!(v.getattr(a), Err(VolumeError::NotFound)));
    let d = v
        .create_node(
            InodeNo::ROOT,
            b"d",
            NewNode {
                kind: Kind::Dir,
                mode: 0o755,
                rdev: 0,
                target: None,
            },
            ME,
        )
        .unwrap()
        .ino;
    assert_eq!(v.getattr(InodeNo::ROOT).unwrap().inode.nlink, 3);
    v.link(b, d, b"hard").unwrap();
    assert_eq!(v.getattr(b).unwrap().inode.nlink, 2);
    let sub = v
        .create_node(
            d,
            b"sub",
            NewNode {
                kind: Kind::Dir,
                mode: 0o755,
                rdev: 0,
                target: None,
            },
            ME,
        )
        .unwrap()
        .ino;
    assert!(matches!(
        v.rename(InodeNo::ROOT, b"d", sub, b"x", RenameMode::Replace),
        Err(VolumeError::Invalid(_))
    ));
    v.rename(d, b"sub", InodeNo::ROOT, b"sub2", RenameMode::Replace)
        .unwrap();
    assert_eq!(v.getattr(d).unwrap().inode.nlink, 2);
    assert_eq!(v.getattr(InodeNo::ROOT).unwrap().inode.nlink, 4);
    assert_eq!(v.parent_of(sub).unwrap(), InodeNo::ROOT);
    assert!(matches!(
        v.rmdir(InodeNo::ROOT, b"d"),
        Err(VolumeError::NotEmpty)
    ));
    assert!(matches!(
        v.create_node(
            InodeNo::ROOT,
            &[b'x'; 256],
            NewNode {
                kind: Kind::File,
                mode: 0o644,
                rdev: 0,
                target: None
            },
            ME
        ),
        Err(VolumeError::NameTooLong)
    ));
}

#[test]
fn unlinked_open_file_lives_until_release() {
    let (_d, v) = volume(65536);
    let ino = file(&v, "tmp");
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 0, b"still here").unwrap();
    v.unlink(InodeNo::ROOT, b"tmp").unwrap();
    assert_eq!(v.read(ino, 0, 100).unwrap(), b"still here");
    assert_eq!(v.getattr(ino).unwrap().inode.nlink, 0);
    v.release(fh).unwrap();
    assert!(matches!(v.getattr(ino), Err(VolumeError::NotFound)));
}

#[test]
fn small_blocks_live_in_the_database_and_survive_reload() {
    let dir = tempfile::tempdir().unwrap();
    Volume::create(dir.path(), 65536, ME).unwrap();
    let identity = age::x25519::Identity::generate();
    let secret = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
    let (v, _) = Volume::load(dir.path(), VolumeKeys::derive(identity), 1).unwrap();
    let ino = file(&v, "small");
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 0, b"tiny file contents").unwrap();
    v.release(fh).unwrap();
    assert!(
        v.store().list().unwrap().is_empty(),
        "a small block became a file"
    );
    v.shutdown().unwrap();
    drop(v);
    let identity: age::x25519::Identity = secret.parse().unwrap();
    let (v, _) = Volume::load(dir.path(), VolumeKeys::derive(identity), 1).unwrap();
    assert_eq!(v.read(ino, 0, 100).unwrap(), b"tiny file contents");
    let id = v.meta().read().unwrap().block_at(ino, 0).unwrap().unwrap();
    assert!(
        v.meta()
            .read()
            .unwrap()
            .inline_block(&id)
            .unwrap()
            .is_some()
    );
    v.unlink(InodeNo::ROOT, b"small").unwrap();
    assert_eq!(v.checkpoint().unwrap(), 1);
    assert!(
        v.meta()
            .read()
            .unwrap()
            .inline_block(&id)
            .unwrap()
            .is_none(),
        "inline bytes leaked"
    );
    assert_eq!(v.counts().unwrap().blocks, 0);
}

/// Regression: garbage collection deleted the file of a block that a concurrent seal had just
/// found present (dedup) and was about to reference again, leaving a committed reference to
/// a missing block (EIO). Seals now pin their block id until committed.
#[test]
fn gc_spares_blocks_a_seal_is_about_to_reference() {
    let (_d, v) = volume(65536);
    let data = vec![5u8; 65536];
    let a = file(&v, "a");
    let fh = v.open(a, OpenFlags::write_only()).unwrap();
    v.write(a, 0, &data).unwrap();
    v.release(fh).unwrap();
    let sealed = v.seal_block(&data).unwrap().expect("not a hole");
    v.unlink(InodeNo::ROOT, b"a").unwrap();
    assert_eq!(v.checkpoint().unwrap(), 0, "a pinned block was collected");
    let b = file(&v, "b");
    let mut tx = v.meta().write().unwrap();
    Volume::apply_block(&mut tx, b, 0, Some(&sealed)).unwrap();
    let mut inode = tx.inode(b).unwrap().unwrap();
    inode.size = 65536;
    tx.put_inode(b, &inode).unwrap();
    tx.commit().unwrap();
    drop(sealed);
    v.cache
        .forget(&crate::pipeline::block_id::block_id(&v.keys.dedup, &data));
    assert_eq!(v.read(b, 0, 65536).unwrap(), data);
    assert_eq!(v.checkpoint().unwrap(), 0);
}

#[test]
fn small_random_reads_decrypt_only_their_chunk() {
    let (_d, v) = volume(1 << 20);
    let ino = file(&v, "big");
    let data: Vec<u8> = (0..(1 << 20)).map(|i| (i % 241) as u8 + 1).collect();
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 0, &data).unwrap();
    v.release(fh).unwrap();
    let id = v.meta().read().unwrap().block_at(ino, 0).unwrap().unwrap();
    v.cache.forget(&id);
    for off in [0usize, 4096, 65_530, 500_000, (1 << 20) - 10] {
        let got = v.read(ino, off as u64, 4096).unwrap();
        assert_eq!(
            got,
            &data[off..(off + 4096).min(data.len())],
            "offset {off}"
        );
    }
    assert!(
        !v.cache.contains(&id),
        "a small read decrypted the whole block"
    );
    assert!(v.keys_cache.get(&id).is_some(), "the payload key is kept");
    // A wrong cached key (as after the block was collected and sealed again) is dropped and
    // the read takes the full path.
    let other = file(&v, "other");
    let fh = v.open(other, OpenFlags::write_only()).unwrap();
    v.write(other, 0, &vec![9u8; 1 << 20]).unwrap();
    v.release(fh).unwrap();
    let other_id = v
        .meta()
        .read()
        .unwrap()
        .block_at(other, 0)
        .unwrap()
        .unwrap();
    // Just sealed, its plaintext is cached: drop it so the read goes to the file.
    v.cache.forget(&other_id);
    v.read(other, 0, 10).unwrap();
    let wrong = v.keys_cache.get(&other_id).unwrap();
    v.keys_cache.insert(id, wrong.clone());
    assert_eq!(v.read(ino, 4096, 100).unwrap(), &data[4096..4196]);
    assert!(!Arc::ptr_eq(&v.keys_cache.get(&id).unwrap(), &wrong));
    // Damage in another chunk does not matter to a partial read; damage in its chunk does.
    let path = v.store().path_of(&id);
    let mut sealed = std::fs::read(&path).unwrap();
    let n = sealed.len();
    sealed[n - 10] ^= 1;
    std::fs::write(&path, &sealed).unwrap();
    assert_eq!(v.read(ino, 0, 100).unwrap(), &data[..100]);
    assert!(matches!(
        v.read(ino, (1 << 20) - 100, 100),
        Err(VolumeError::Corrupt { .. })
    ));
}

/// Polls `done` until it holds (deadline 30 s): sealing runs on its own threads.
fn eventually(mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn partly_written_blocks_are_sealed_by_age_without_a_close() {
    use std::time::Duration;
    let (_d, v) = volume(64 * 1024);
    let ino = file(&v, "open");
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 100, b"partial").unwrap();
    assert!(v.meta().read().unwrap().block_at(ino, 0).unwrap().is_none());
    assert_eq!(v.write_back(Duration::from_secs(3600)), 0, "too young");
    assert_eq!(v.write_back(Duration::ZERO), 1);
    eventually(|| v.getxattr(ino, b"user.bitcloud.state").unwrap() == b"local");
    assert!(v.meta().read().unwrap().block_at(ino, 0).unwrap().is_some());
    let (committed, _) = v.commit_counts();
    v.make_durable().unwrap();
    assert!(v.commit_counts().1 >= committed);
    assert_eq!(v.read(ino, 100, 7).unwrap(), b"partial");
    v.release(fh).unwrap();
}

#[test]
fn the_write_buffer_bounds_memory_under_random_writes() {
    let bs = 64 * 1024;
    let (_d, v) = volume(bs as u32);
    v.set_write_buffer(8 * bs as u64);
    let ino = file(&v, "random");
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    let mut model = vec![0u8; 64 * bs];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..600 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let offset = (x % (model.len() as u64 - 4096)) as usize;
        let data = vec![(i % 250) as u8 + 1; 4096];
        v.write(ino, offset as u64, &data).unwrap();
        model[offset..offset + 4096].copy_from_slice(&data);
        assert!(
            v.write_budget.used() <= 8 * bs as u64,
            "write {i}: {} bytes buffered",
            v.write_budget.used()
        );
    }
    let size = v.getattr(ino).unwrap().inode.size as usize;
    assert_eq!(v.read(ino, 0, size as u32).unwrap(), model[..size]);
    v.release(fh).unwrap();
    assert_eq!(v.write_budget.used(), 0);
    assert_eq!(v.read(ino, 0, size as u32).unwrap(), model[..size]);
}

#[test]
fn small_reads_past_the_end_of_a_short_block_are_zeros() {
    // Block 0 holds 40,000 bytes (a file, not inline); a write in block 1 extends the file,
    // so bytes 40,000.. of block 0 are a hole that small (partial) reads must see as zeros.
    let bs = 128 * 1024;
    let (_d, v) = volume(bs as u32);
    let ino = file(&v, "short");
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, 0, &[5u8; 40_000]).unwrap();
    v.write(ino, bs as u64 + 10, b"next").unwrap();
    v.release(fh).unwrap();
    let id = v.meta().read().unwrap().block_at(ino, 0).unwrap().unwrap();
    v.cache.forget(&id);
    // The first read of the block (no payload key cached yet) is the one past its end.
    for (off, len) in [(100_000u64, 4096u32), (40_000, 4096), (39_990, 20), (0, 10)] {
        let got = v.read(ino, off, len).unwrap();
        let want: Vec<u8> = (off..off + len as u64)
            .map(|i| if i < 40_000 { 5 } else { 0 })
            .collect();
        assert_eq!(got, want, "read {len} at {off}");
    }
}

/// Directory offsets were the top 64 bits of the name tag, so most had bit 63 set and
/// `lseek(dirfd, d_off)` (telldir/seekdir) failed with EINVAL. Every cookie must be below
/// 2^63, and a listing resumed from any returned cookie must go on exactly after it, also
/// while entries come and go.
#[test]
fn readdir_cookies_fit_loff_t_and_resume_anywhere() {
    let (_d, v) = volume(64 * 1024);
    let names: Vec<String> = (0..600).map(|i| format!("entry-{i}")).collect();
    for n in &names {
        file(&v, n);
    }
    let all = v.readdir(InodeNo::ROOT, 0, 10_000, false).unwrap();
    assert_eq!(all.len(), names.len());
    let mut seen = std::collections::HashSet::new();
    for (i, e) in all.iter().enumerate() {
        assert!(
            e.cookie < 1 << 63,
            "cookie {:#x} does not fit loff_t",
            e.cookie
        );
        assert!(e.cookie >= 3, "cookies 0..=2 belong to the start, . and ..");
        assert!(
            i == 0 || all[i - 1].cookie < e.cookie,
            "cookies follow listing order"
        );
        seen.insert(e.name.clone());
        let rest = v.readdir(InodeNo::ROOT, e.cookie, 10_000, false).unwrap();
        let expect: Vec<_> = all[i + 1..].iter().map(|e| e.name.clone()).collect();
        let got: Vec<_> = rest.iter().map(|e| e.name.clone()).collect();
        assert_eq!(got, expect, "resuming after entry {i}");
    }
    assert_eq!(seen.len(), names.len());
    // Page through in small steps while removing already-listed entries and adding new ones:
    // every entry present throughout is returned exactly once.
    let mut cookie = 0;
    let mut listed = Vec::new();
    let mut round = 0;
    loop {
        let page = v.readdir(InodeNo::ROOT, cookie, 7, false).unwrap();
        let Some(last) = page.last() else { break };
        cookie = last.cookie;
        for e in &page {
            listed.push(String::from_utf8(e.name.clone()).unwrap());
        }
        v.unlink(InodeNo::ROOT, page[0].name.as_slice()).unwrap();
        file(&v, &format!("new-{round}"));
        round += 1;
    }
    let originals: Vec<_> = listed.iter().filter(|n| n.starts_with("entry-")).collect();
    let unique: std::collections::HashSet<_> = originals.iter().collect();
    assert_eq!(
        originals.len(),
        names.len(),
        "every original entry exactly once"
    );
    assert_eq!(unique.len(), names.len());
    // Past the last possible cookie there is nothing.
    assert!(
        v.readdir(InodeNo::ROOT, u64::MAX >> 1, 10, false)
            .unwrap()
            .is_empty()
    );
}

fn dir(v: &Volume, name: &str) -> InodeNo {
    v.create_node(
        InodeNo::ROOT,
        name.as_bytes(),
        NewNode::of(Kind::Dir, 0o755),
        ME,
    )
    .unwrap()
    .ino
}

/// `fstat` on a descriptor open on a directory gave ENOENT once the directory was removed
/// (rmdir, or rename over it): the inode was freed at once. It must keep answering with
/// nlink 0 until the last close, and be freed then (also after a remount).
#[test]
fn removed_open_directory_keeps_its_attributes_until_closed() {
    let d = tempfile::tempdir().unwrap();
    Volume::create(d.path(), 65536, ME).unwrap();
    let identity = age::x25519::Identity::generate();
    let secret = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
    let (v, _) = Volume::load(d.path(), VolumeKeys::derive(identity), 1).unwrap();
    let a = dir(&v, "a");
    v.opendir(a).unwrap();
    v.opendir(a).unwrap();
    v.rmdir(InodeNo::ROOT, b"a").unwrap();
    let attr = v
        .getattr(a)
        .expect("an open removed directory keeps its attributes");
    assert_eq!(attr.inode.nlink, 0);
    assert_eq!(attr.inode.kind, Kind::Dir);
    assert!(v.readdir(a, 0, 10, false).unwrap().is_empty());
    assert!(matches!(
        v.create_node(a, b"x", NewNode::of(Kind::File, 0o644), ME),
        Err(VolumeError::NotFound)
    ));
    v.releasedir(a).unwrap();
    assert!(v.getattr(a).is_ok(), "one handle is still open");
    v.releasedir(a).unwrap();
    assert!(matches!(v.getattr(a), Err(VolumeError::NotFound)));

    // rename(d1, d2) over an empty, open d2.
    let d1 = dir(&v, "d1");
    let d2 = dir(&v, "d2");
    v.opendir(d2).unwrap();
    v.rename(
        InodeNo::ROOT,
        b"d1",
        InodeNo::ROOT,
        b"d2",
        RenameMode::Replace,
    )
    .unwrap();
    assert_eq!(v.getattr(d2).unwrap().inode.nlink, 0);
    assert_eq!(v.lookup(InodeNo::ROOT, b"d2").unwrap().ino, d1);
    assert_eq!(v.getattr(InodeNo::ROOT).unwrap().inode.nlink, 3);

    // Still open at an unclean stop: the next load frees it.
    v.make_durable().unwrap();
    drop(v);
    let identity: age::x25519::Identity = secret.parse().unwrap();
    let (v, rec) = Volume::load(d.path(), VolumeKeys::derive(identity), 1).unwrap();
    assert_eq!(rec.orphans_removed, 1);
    assert!(matches!(v.getattr(d2), Err(VolumeError::NotFound)));
}

/// fallocate did not reserve anything (a later write could still hit ENOSPC) and did not
/// show in st_blocks (a write into the range made the allocation grow). Now the range is
/// reserved on disk, counted at once, and a write into it moves blocks from reserved to
/// stored without changing st_blocks; truncation and deletion give the space back.
#[test]
fn fallocate_reserves_space_and_counts_it() {
    let bs = 64 * 1024u64;
    let (d, v) = volume(bs as u32);
    let reserved_file = || std::fs::metadata(d.path().join("reserved")).map_or(0, |m| m.len());
    let ino = file(&v, "pre");
    v.fallocate(ino, 0, 4 * bs, libc::FALLOC_FL_KEEP_SIZE, ME)
        .unwrap();
    let a = v.getattr(ino).unwrap();
    assert_eq!(a.inode.size, 0, "KEEP_SIZE");
    assert_eq!(a.blocks512 * 512, 4 * bs);
    let unit = reserved_file() / 4;
    assert!(unit >= bs && unit % 4096 == 0, "unit {unit}");
    // Again over the same range: nothing more is reserved.
    v.fallocate(ino, 0, 2 * bs, libc::FALLOC_FL_KEEP_SIZE, ME)
        .unwrap();
    assert_eq!(reserved_file(), 4 * unit);

    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, bs, &vec![7u8; bs as usize]).unwrap();
    v.release(fh).unwrap();
    let a = v.getattr(ino).unwrap();
    assert_eq!(a.inode.size, 2 * bs);
    assert_eq!((a.inode.stored_blocks, a.inode.reserved_blocks), (1, 3));
    assert_eq!(
        a.blocks512 * 512,
        4 * bs,
        "a write into the range does not grow it"
    );
    v.checkpoint().unwrap();
    assert_eq!(
        reserved_file(),
        3 * unit,
        "the stored block's unit is given back"
    );

    // Mode 0 extends the size; a small range counts only its bytes.
    let small = file(&v, "small");
    v.fallocate(small, 0, 4096, 0, ME).unwrap();
    let a = v.getattr(small).unwrap();
    assert_eq!((a.inode.size, a.blocks512), (4096, 8));
    let fh = v.open(small, OpenFlags::write_only()).unwrap();
    v.write(small, 0, &[1u8; 4096]).unwrap();
    v.release(fh).unwrap();
    assert_eq!(v.getattr(small).unwrap().blocks512, 8);

    let opts = crate::volume::fsck::FsckOptions {
        verify_data: true,
        repair: false,
        online: false,
    };
    let report = v.fsck(opts, &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    v.truncate(ino, bs).unwrap();
    let a = v.getattr(ino).unwrap();
    assert_eq!(
        a.inode.reserved_blocks, 1,
        "truncation ends reservations past the end"
    );
    assert_eq!(a.blocks512 * 512, bs);
    v.truncate(ino, 0).unwrap();
    assert_eq!(v.getattr(ino).unwrap().blocks512, 0);
    v.unlink(InodeNo::ROOT, b"small").unwrap();
    v.checkpoint().unwrap();
    assert_eq!(reserved_file(), 0);
}

/// Not a test: prints what create, stat and unlink cost inside the volume, without FUSE
/// (`cargo test --release -- --ignored --nocapture metadata_costs`).
#[test]
#[ignore]
fn metadata_costs() {
    let (_d, v) = volume(1 << 20);
    let n = 10_000;
    let buf = vec![5u8; 4096];
    let t = std::time::Instant::now();
    let mut inos = Vec::new();
    for i in 0..n {
        let name = format!("f{i:06}");
        let a = v
            .create_node(
                InodeNo::ROOT,
                name.as_bytes(),
                NewNode::of(Kind::File, 0o644),
                ME,
            )
            .unwrap();
        let fh = v.open(a.ino, OpenFlags::write_only()).unwrap();
        let mut b = buf.clone();
        b[..8].copy_from_slice(&(i as u64).to_le_bytes());
        v.write(a.ino, 0, &b).unwrap();
        v.flush(a.ino).unwrap();
        v.release(fh).unwrap();
        inos.push(a.ino);
    }
    let create = t.elapsed();
    let t = std::time::Instant::now();
    for i in 0..n {
        let name = format!("f{i:06}");
        let a = v.lookup(InodeNo::ROOT, name.as_bytes()).unwrap();
        v.getattr(a.ino).unwrap();
    }
    let stat = t.elapsed();
    let t = std::time::Instant::now();
    for i in 0..n {
        let name = format!("f{i:06}");
        v.lookup(InodeNo::ROOT, name.as_bytes()).unwrap();
        v.unlink(InodeNo::ROOT, name.as_bytes()).unwrap();
    }
    let unlink = t.elapsed();
    // Unlinks again, with a thread doing lookups meanwhile (as other FUSE threads do).
    for i in 0..n {
        let name = format!("g{i:06}");
        v.create_node(
            InodeNo::ROOT,
            name.as_bytes(),
            NewNode::of(Kind::File, 0o644),
            ME,
        )
        .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (v, stop) = (v.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = v.lookup(InodeNo::ROOT, b"g000001");
            }
        })
    };
    let t = std::time::Instant::now();
    for i in 0..n {
        let name = format!("g{i:06}");
        v.unlink(InodeNo::ROOT, name.as_bytes()).unwrap();
    }
    let unlink_busy = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    println!(
        "unlink with a concurrent reader: {:.1} us",
        unlink_busy.as_secs_f64() * 1e6 / n as f64
    );
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!(
        "per file: create+write+close {:.1} us, lookup+getattr {:.1} us, lookup+unlink {:.1} us",
        per(create),
        per(stat),
        per(unlink)
    );
}

/// Runs `scenario` on the volume in `dir` in a child process that then dies without any
/// cleanup (as kill -9 would: nothing is dropped, so commits never made durable are lost),
/// and returns what the scenario sent back through a pipe.
fn in_a_process_that_crashes(
    dir: &Path,
    secret: &str,
    scenario: impl FnOnce(&Volume) -> Vec<u8>,
) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut fds = [0i32; 2];
    // SAFETY: pipe and fork with valid arguments; the child runs only the scenario and exits
    // with _exit, so no destructor of the parent's state runs twice.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let identity: age::x25519::Identity = secret.parse().unwrap();
            let (v, _) = Volume::load(dir, VolumeKeys::derive(identity), 2).unwrap();
            let out = scenario(&v);
            // SAFETY: fds[1] is the pipe's write end, owned by this process.
            let mut w = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
            w.write_all(&out).unwrap();
            std::mem::forget(w);
            std::mem::forget(v);
        }))
        .map_or(1, |_| 0);
        unsafe { libc::_exit(code) };
    }
    unsafe { libc::close(fds[1]) };
    let mut out = Vec::new();
    // SAFETY: fds[0] is the pipe's read end, owned here.
    let mut r = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    r.read_to_end(&mut out).unwrap();
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the scenario failed"
    );
    out
}

/// fsync through the journal: the file as it was at the last fsync is what a crash (a
/// process dying with its last changes never made durable) gives back, including
/// truncations, punched blocks and blocks sealed between fsyncs; writes after the last fsync
/// may be lost, and a file never fsynced is gone.
#[test]
fn journalled_fsync_survives_a_crash() {
    let bs = 64 * 1024usize;
    let d = tempfile::tempdir().unwrap();
    Volume::create(d.path(), bs as u32, ME).unwrap();
    let identity = age::x25519::Identity::generate();
    let secret = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
    // A durable file to start from.
    {
        let (v, _) = Volume::load(d.path(), VolumeKeys::derive(identity), 2).unwrap();
        let ino = file(&v, "db");
        let fh = v.open(ino, OpenFlags::write_only()).unwrap();
        v.write(ino, 0, &vec![1u8; 3 * bs + 100]).unwrap();
        v.release(fh).unwrap();
        v.shutdown().unwrap();
    }
    let at_fsync = in_a_process_that_crashes(d.path(), &secret, |v| {
        let ino = v.lookup(InodeNo::ROOT, b"db").unwrap().ino;
        let mut model = v.read(ino, 0, 1 << 30).unwrap();
        let write = |model: &mut Vec<u8>, off: usize, data: &[u8]| {
            v.write(ino, off as u64, data).unwrap();
            if model.len() < off + data.len() {
                model.resize(off + data.len(), 0);
            }
            model[off..off + data.len()].copy_from_slice(data);
        };
        let fh = v.open(ino, OpenFlags::write_only()).unwrap();
        let (_, durable_before) = v.commit_counts();
        write(&mut model, 10, b"small change");
        write(&mut model, bs + 5, &[7u8; 300]);
        v.fsync(ino).unwrap();
        assert_eq!(
            v.commit_counts().1,
            durable_before,
            "a journalled fsync made it all durable"
        );
        v.truncate(ino, (bs + 200) as u64).unwrap();
        model.truncate(bs + 200);
        write(&mut model, 4 * bs, &vec![9u8; bs]); // a whole block: sealed in the background
        eventually(|| v.meta().read().unwrap().block_at(ino, 4).unwrap().is_some());
        v.fallocate(
            ino,
            0,
            bs as u64,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            ME,
        )
        .unwrap();
        model[..bs].fill(0);
        write(&mut model, 2 * bs + 1, b"beyond the old end");
        v.fsync(ino).unwrap();
        assert_eq!(v.commit_counts().1, durable_before);
        // Not fsynced: lost at the crash.
        v.write(ino, 0, b"lost").unwrap();
        v.release(fh).unwrap();
        file(v, "ghost");
        model
    });
    let identity: age::x25519::Identity = secret.parse().unwrap();
    let (v, rec) = Volume::load(d.path(), VolumeKeys::derive(identity), 2).unwrap();
    assert!(rec.journal_records > 0);
    assert!(
        matches!(
            v.lookup(InodeNo::ROOT, b"ghost"),
            Err(VolumeError::NotFound)
        ),
        "the crash kept a commit that was never made durable"
    );
    let ino = v.lookup(InodeNo::ROOT, b"db").unwrap().ino;
    assert_eq!(v.getattr(ino).unwrap().inode.size, at_fsync.len() as u64);
    let got = v.read(ino, 0, at_fsync.len() as u32 + 10).unwrap();
    assert!(got == at_fsync, "contents differ from the last fsync");
    // Replayed and made durable: nothing is replayed again, and the volume checks clean.
    drop(v);
    let identity: age::x25519::Identity = secret.parse().unwrap();
    let (v, rec) = Volume::load(d.path(), VolumeKeys::derive(identity), 2).unwrap();
    assert_eq!(rec.journal_records, 0);
    assert!(v.read(ino, 0, at_fsync.len() as u32 + 10).unwrap() == at_fsync);
    let opts = crate::volume::fsck::FsckOptions {
        verify_data: true,
        repair: false,
        online: false,
    };
    let report = v.fsck(opts, &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// A truncation that cuts a block keeps the stored block and records how much of it counts:
/// growing the file again reads zeros past the cut (also after a remount), and writing into
/// the cut block keeps the bytes before the cut.
#[test]
fn truncation_clips_the_edge_block_without_resealing() {
    let bs = 64 * 1024usize;
    let d = tempfile::tempdir().unwrap();
    Volume::create(d.path(), bs as u32, ME).unwrap();
    let identity = age::x25519::Identity::generate();
    let secret = age::secrecy::ExposeSecret::expose_secret(&identity.to_string()).to_string();
    let (v, _) = Volume::load(d.path(), VolumeKeys::derive(identity), 1).unwrap();
    let ino = file(&v, "f");
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    let data: Vec<u8> = (0..3 * bs).map(|i| (i % 251) as u8 + 1).collect();
    v.write(ino, 0, &data).unwrap();
    v.release(fh).unwrap();
    let stored = v.store().list().unwrap().len();
    let cut = bs + 1000;
    v.truncate(ino, cut as u64).unwrap();
    assert_eq!(
        v.store().list().unwrap().len(),
        stored,
        "the cut block was re-sealed"
    );
    v.truncate(ino, (3 * bs) as u64).unwrap();
    let got = v.read(ino, 0, (3 * bs) as u32).unwrap();
    assert_eq!(&got[..cut], &data[..cut]);
    assert!(
        got[cut..].iter().all(|b| *b == 0),
        "bytes past the cut came back"
    );
    v.shutdown().unwrap();
    drop(v);
    let identity: age::x25519::Identity = secret.parse().unwrap();
    let (v, _) = Volume::load(d.path(), VolumeKeys::derive(identity), 1).unwrap();
    let got = v.read(ino, 0, (3 * bs) as u32).unwrap();
    assert_eq!(&got[..cut], &data[..cut]);
    assert!(
        got[cut..].iter().all(|b| *b == 0),
        "bytes past the cut came back after a remount"
    );
    let fh = v.open(ino, OpenFlags::write_only()).unwrap();
    v.write(ino, (cut + 500) as u64, b"after").unwrap();
    v.release(fh).unwrap();
    let got = v.read(ino, 0, (3 * bs) as u32).unwrap();
    assert_eq!(&got[..cut], &data[..cut]);
    assert!(got[cut..cut + 500].iter().all(|b| *b == 0));
    assert_eq!(&got[cut + 500..cut + 505], b"after");
}
