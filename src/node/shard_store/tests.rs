//! The shard store's own tests: offers, owners, leases, damage.

use super::*;
use crate::pipeline::erasure::shard_id;

#[test]
fn put_get_release_with_offer_and_owners() {
    let dir = tempfile::tempdir().unwrap();
    let s = ShardStore::open(dir.path(), 10_000).unwrap();
    let a = vec![1u8; 4000];
    let b = vec![2u8; 4000];
    let (ia, ib) = (shard_id(&a), shard_id(&b));
    assert!(matches!(
        s.put(b"alice", &ia, &a).unwrap(),
        PutOutcome::Stored
    ));
    assert!(
        matches!(s.put(b"alice", &ia, &a).unwrap(), PutOutcome::Stored),
        "idempotent"
    );
    assert!(matches!(
        s.put(b"alice", &ia, &b).unwrap(),
        PutOutcome::Refused(Refusal::BadHash)
    ));
    assert!(matches!(
        s.put(b"bob", &ib, &b).unwrap(),
        PutOutcome::Stored
    ));
    assert!(matches!(
        s.put(b"bob", &ia, &a).unwrap(),
        PutOutcome::Refused(Refusal::OfferFull)
    ));
    assert_eq!(s.used(), 8000);
    assert_eq!(s.used_by(b"alice"), 4000);
    assert_eq!(s.get(&ia).unwrap().unwrap(), a);
    assert_eq!(s.has(b"alice", &[ia, ib]), vec![true, false]);
    // Bob cannot release Alice's shard.
    assert_eq!(s.release(b"bob", &[ia]).unwrap(), 0);
    assert!(s.get(&ia).unwrap().is_some());
    // Reopened: the index comes back from the files.
    drop(s);
    let s = ShardStore::open(dir.path(), 10_000).unwrap();
    assert_eq!((s.used(), s.count()), (8000, 2));
    assert_eq!(s.release(b"alice", &[ia, ib]).unwrap(), 1);
    assert!(s.get(&ia).unwrap().is_none());
    assert_eq!(s.used(), 4000);
}

#[test]
fn one_owner_cannot_take_more_than_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let s = ShardStore::open(dir.path(), 10_000).unwrap();
    s.set_per_owner(5_000);
    let shard = |b: u8| {
        let v = vec![b; 3000];
        (shard_id(&v), v)
    };
    let (i1, s1) = shard(1);
    let (i2, s2) = shard(2);
    assert!(matches!(
        s.put(b"alice", &i1, &s1).unwrap(),
        PutOutcome::Stored
    ));
    assert!(matches!(
        s.put(b"alice", &i2, &s2).unwrap(),
        PutOutcome::Refused(Refusal::OfferFull)
    ));
    // Another owner still has room.
    assert!(matches!(
        s.put(b"bob", &i2, &s2).unwrap(),
        PutOutcome::Stored
    ));
    assert_eq!(s.used_by(b"alice"), 3000);
}

#[test]
fn leases_expire_into_the_trash_and_renewals_bring_copies_back() {
    let dir = tempfile::tempdir().unwrap();
    let terms = LeaseTerms {
        lease: std::time::Duration::from_secs(100),
        trash: std::time::Duration::from_secs(50),
    };
    let s = ShardStore::open_with(dir.path(), 1 << 20, terms).unwrap();
    let (a, b) = (vec![1u8; 3000], vec![2u8; 2000]);
    let (ia, ib) = (shard_id(&a), shard_id(&b));
    s.put(b"alice", &ia, &a).unwrap();
    s.put(b"bob", &ib, &b).unwrap();
    let t0 = now_secs();
    assert_eq!(
        s.sweep(t0 + 50).unwrap(),
        Swept::default(),
        "within the lease"
    );
    // Alice renews; Bob has vanished.
    assert_eq!(
        s.renew_at(b"alice", &[ia, ib], t0 + 60).unwrap(),
        vec![true, false]
    );
    let swept = s.sweep(t0 + 101).unwrap();
    assert_eq!((swept.trashed, swept.deleted), (1, 0));
    assert_eq!(s.has(b"bob", &[ib]), vec![false]);
    assert_eq!(s.get(&ib).unwrap().unwrap(), b, "trash is still served");
    assert_eq!((s.used(), s.trash_bytes(), s.count()), (3000, 2000, 1));
    // The expiry lives in the file: a restart keeps it.
    drop(s);
    let s = ShardStore::open_with(dir.path(), 1 << 20, terms).unwrap();
    assert_eq!((s.used(), s.trash_bytes()), (3000, 2000));
    // Bob comes back within the trash period: renewing restores his copy.
    assert_eq!(s.renew(b"bob", &[ib]).unwrap(), vec![true]);
    assert_eq!((s.used(), s.trash_bytes(), s.count()), (5000, 0, 2));
    assert_eq!(s.has(b"bob", &[ib]), vec![true]);
    // Nobody renews again: both expire, then the trash period ends.
    let later = t0 + 161;
    assert_eq!(s.sweep(later).unwrap().trashed, 2);
    let swept = s.sweep(later + 50).unwrap();
    assert_eq!((swept.deleted, swept.deleted_bytes), (2, 5000));
    assert_eq!((s.used(), s.trash_bytes(), s.count()), (0, 0, 0));
    assert!(s.get(&ia).unwrap().is_none());
    assert_eq!(
        std::fs::read_dir(dir.path().join("trash")).unwrap().count(),
        0
    );
}

#[test]
fn a_put_of_a_trashed_copy_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let terms = LeaseTerms {
        lease: std::time::Duration::from_secs(10),
        trash: std::time::Duration::from_secs(10),
    };
    let s = ShardStore::open_with(dir.path(), 1 << 20, terms).unwrap();
    let a = vec![5u8; 1000];
    let id = shard_id(&a);
    s.put(b"alice", &id, &a).unwrap();
    assert_eq!(s.sweep(now_secs() + 11).unwrap().trashed, 1);
    assert!(matches!(
        s.put(b"alice", &id, &a).unwrap(),
        PutOutcome::Stored
    ));
    assert_eq!((s.used(), s.trash_bytes()), (1000, 0));
    assert_eq!(s.sweep(now_secs() + 5).unwrap(), Swept::default());
    assert_eq!(s.release(b"alice", &[id]).unwrap(), 1);
    assert_eq!(s.used(), 0);
}

#[test]
fn damaged_copies_are_quarantined_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = ShardStore::open(dir.path(), 1 << 20).unwrap();
    let a = vec![7u8; 5000];
    let id = shard_id(&a);
    s.put(b"alice", &id, &a).unwrap();
    let path = s.path_of(&id, &owner_tag(b"alice"), false);
    let mut raw = std::fs::read(&path).unwrap();
    let n = raw.len();
    raw[n - 1] ^= 1;
    std::fs::write(&path, raw).unwrap();
    assert!(s.get(&id).unwrap().is_none());
    assert!(!path.exists());
    assert_eq!(s.used(), 0);
    assert_eq!(
        std::fs::read_dir(dir.path().join("quarantine"))
            .unwrap()
            .count(),
        1
    );
}
