//! Model-based test of the volume without FUSE: random operations are applied both to a
//! `Volume` and to a plain in-memory model (names -> shared byte vectors, so hard links share
//! contents), and every name's size and bytes are compared after each step. A `Remount` op
//! closes everything, shuts the volume down and loads it again from disk with the same keys.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;

use age::secrecy::ExposeSecret;
use bitcloud::ids::InodeNo;
use bitcloud::keys::VolumeKeys;
use bitcloud::meta::codec::Kind;
use bitcloud::volume::{Caller, NewNode, OpenFlags, RenameMode, Volume, VolumeError};
use proptest::prelude::*;

const ME: Caller = Caller { uid: 0, gid: 0 };
const BLOCK: u32 = 64 * 1024;
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

#[derive(Clone, Debug)]
enum Op {
    Create(usize),
    Write {
        name: usize,
        offset: u32,
        len: u32,
        seed: u8,
        keep_open: bool,
    },
    Truncate {
        name: usize,
        size: u32,
    },
    Unlink(usize),
    Rename {
        from: usize,
        to: usize,
    },
    Link {
        from: usize,
        to: usize,
    },
    CloseAll,
    /// The daemon's tick: seal every partly written block now.
    WriteBack,
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    prop_oneof![
        2 => name.clone().prop_map(Op::Create),
        6 => (name.clone(), 0u32..300_000, 0u32..200_000, any::<u8>(), any::<bool>())
            .prop_map(|(name, offset, len, seed, keep_open)| Op::Write { name, offset, len, seed, keep_open }),
        2 => (name.clone(), 0u32..400_000).prop_map(|(name, size)| Op::Truncate { name, size }),
        1 => name.clone().prop_map(Op::Unlink),
        1 => (name.clone(), name.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => (name.clone(), name).prop_map(|(from, to)| Op::Link { from, to }),
        1 => Just(Op::CloseAll),
        1 => Just(Op::WriteBack),
        1 => Just(Op::Remount),
    ]
}

type Content = Arc<std::sync::Mutex<Vec<u8>>>;

struct Harness {
    dir: tempfile::TempDir,
    identity: String,
    volume: Option<Arc<Volume>>,
    open: Vec<u64>,
    model: BTreeMap<&'static str, Content>,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Volume::create(dir.path(), BLOCK, ME).unwrap();
        let identity = age::x25519::Identity::generate()
            .to_string()
            .expose_secret()
            .to_string();
        let volume = Self::load(dir.path(), &identity);
        Harness {
            dir,
            identity,
            volume: Some(volume),
            open: Vec::new(),
            model: BTreeMap::new(),
        }
    }

    fn load(path: &std::path::Path, identity: &str) -> Arc<Volume> {
        let id = age::x25519::Identity::from_str(identity).unwrap();
        let v = Volume::load(path, VolumeKeys::derive(id), 2).unwrap().0;
        // The smallest write buffer (four blocks): writes of up to 200 KB to several open
        // files keep it full, so the budget's backpressure runs all the time.
        v.set_write_buffer(0);
        v
    }

    fn v(&self) -> &Arc<Volume> {
        self.volume.as_ref().expect("loaded")
    }

    fn ino(&self, name: &str) -> Option<InodeNo> {
        match self.v().lookup(InodeNo::ROOT, name.as_bytes()) {
            Ok(a) => Some(a.ino),
            Err(VolumeError::NotFound) => None,
            Err(e) => panic!("lookup {name}: {e}"),
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Create(n) => {
                let r = self.v().create_node(
                    InodeNo::ROOT,
                    NAMES[n].as_bytes(),
                    NewNode {
                        kind: Kind::File,
                        mode: 0o644,
                        rdev: 0,
                        target: None,
                    },
                    ME,
                );
                match (self.model.contains_key(NAMES[n]), r) {
                    (true, Err(VolumeError::Exists)) => {}
                    (false, Ok(_)) => {
                        self.model.insert(NAMES[n], Arc::default());
                    }
                    (exists, r) => {
                        panic!("create {}: model exists={exists}, volume {r:?}", NAMES[n])
                    }
                }
            }
            Op::Write {
                name,
                offset,
                len,
                seed,
                keep_open,
            } => {
                let Some(ino) = self.ino(NAMES[name]) else {
                    return;
                };
                let data: Vec<u8> = (0..len)
                    .map(|i| seed.wrapping_add((i % 251) as u8) | 1)
                    .collect();
                let fh = self.v().open(ino, OpenFlags::write_only()).unwrap();
                assert_eq!(
                    self.v().write(ino, offset as u64, &data).unwrap(),
                    data.len()
                );
                if keep_open {
                    self.open.push(fh);
                } else {
                    self.v().release(fh).unwrap();
                }
                let mut c = self.model[NAMES[name]].lock().unwrap();
                let end = offset as usize + data.len();
                if !data.is_empty() && c.len() < end {
                    c.resize(end, 0);
                }
                c[offset as usize..end].copy_from_slice(&data);
            }
            Op::Truncate { name, size } => {
                let Some(ino) = self.ino(NAMES[name]) else {
                    return;
                };
                self.v().truncate(ino, size as u64).unwrap();
                self.model[NAMES[name]]
                    .lock()
                    .unwrap()
                    .resize(size as usize, 0);
            }
            Op::Unlink(n) => {
                let r = self.v().unlink(InodeNo::ROOT, NAMES[n].as_bytes());
                assert_eq!(
                    r.is_ok(),
                    self.model.remove(NAMES[n]).is_some(),
                    "unlink {}: {r:?}",
                    NAMES[n]
                );
            }
            Op::Rename { from, to } => {
                let r = self.v().rename(
                    InodeNo::ROOT,
                    NAMES[from].as_bytes(),
                    InodeNo::ROOT,
                    NAMES[to].as_bytes(),
                    RenameMode::Replace,
                );
                match self.model.get(NAMES[from]).cloned() {
                    None => assert!(matches!(r, Err(VolumeError::NotFound)), "{r:?}"),
                    Some(c) => {
                        r.unwrap();
                        let same = self
                            .model
                            .get(NAMES[to])
                            .is_some_and(|d| Arc::ptr_eq(d, &c));
                        if from != to && !same {
                            self.model.remove(NAMES[from]);
                            self.model.insert(NAMES[to], c);
                        }
                    }
                }
            }
            Op::Link { from, to } => {
                let Some(ino) = self.ino(NAMES[from]) else {
                    return;
                };
                let r = self.v().link(ino, InodeNo::ROOT, NAMES[to].as_bytes());
                if self.model.contains_key(NAMES[to]) {
                    assert!(matches!(r, Err(VolumeError::Exists)), "{r:?}");
                } else {
                    r.unwrap();
                    let c = self.model[NAMES[from]].clone();
                    self.model.insert(NAMES[to], c);
                }
            }
            Op::CloseAll => {
                for fh in std::mem::take(&mut self.open) {
                    self.v().release(fh).unwrap();
                }
            }
            Op::WriteBack => {
                self.v().write_back(std::time::Duration::ZERO);
            }
            Op::Remount => {
                for fh in std::mem::take(&mut self.open) {
                    self.v().release(fh).unwrap();
                }
                self.v().shutdown().unwrap();
                let old = self.volume.take().expect("loaded");
                assert_eq!(Arc::strong_count(&old), 1, "someone still holds the volume");
                drop(old);
                self.volume = Some(Self::load(self.dir.path(), &self.identity));
            }
        }
    }

    fn check(&self) {
        let listed: Vec<String> = self
            .v()
            .readdir(InodeNo::ROOT, 0, 100, false)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        let expected: Vec<String> = self.model.keys().map(|s| s.to_string()).collect();
        assert_eq!(listed_sorted, expected, "directory listing");
        for (name, content) in &self.model {
            let want = content.lock().unwrap();
            let ino = self.ino(name).unwrap_or_else(|| panic!("{name} missing"));
            let attr = self.v().getattr(ino).unwrap();
            assert_eq!(attr.inode.size, want.len() as u64, "size of {name}");
            let got = self.v().read(ino, 0, want.len() as u32 + 100).unwrap();
            assert!(
                got == *want,
                "contents of {name} differ (len {} vs {})",
                got.len(),
                want.len()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn volume_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op);
            h.check();
        }
        h.apply(&Op::Remount);
        h.check();
    }
}
