//! fsck of fallocate reservations: every reserved slot belongs to a live file and holds no
//! stored block, and each file's count equals its reserved slots. Mistakes here only
//! miscount space (`st_blocks`, the reservation file), never data.

use std::collections::HashMap;

use super::{Checker, Fix, InodeFacts, ProblemKind, path_of};
use crate::ids::InodeNo;
use crate::meta::Reader;
use crate::meta::codec::Kind;
use crate::volume::Result;

impl Checker<'_> {
    pub(super) fn check_reservations(
        &mut self,
        snap: &crate::meta::ReadTx,
        inodes: &HashMap<InodeNo, InodeFacts>,
    ) -> Result<()> {
        let mut counted: HashMap<InodeNo, u64> = HashMap::new();
        for (ino, index) in snap.reserved_slots()? {
            let live = inodes.get(&ino).is_some_and(|f| f.kind == Kind::File);
            if !live {
                self.fixable(
                    ProblemKind::Reservation,
                    format!("block {index} of file {ino} is reserved, but the file does not exist"),
                    vec![],
                    Fix::Unreserve(ino, index),
                );
            } else if snap.block_at(ino, index)?.is_some() {
                self.fixable(
                    ProblemKind::Reservation,
                    format!("block {index} of file {ino} is both stored and reserved"),
                    vec![path_of(self.vol, snap, inodes, ino)],
                    Fix::Unreserve(ino, index),
                );
                // Counted below as if the row were gone, which is what the fix makes true.
            } else {
                *counted.entry(ino).or_default() += 1;
            }
        }
        let mut inos: Vec<InodeNo> = inodes.keys().copied().collect();
        inos.sort();
        for ino in inos {
            let f = &inodes[&ino];
            let actual = counted.get(&ino).copied().unwrap_or(0);
            if f.reserved != actual {
                self.fixable(
                    ProblemKind::Reservation,
                    format!(
                        "file {ino} counts {} reserved blocks, {actual} are reserved",
                        f.reserved
                    ),
                    vec![path_of(self.vol, snap, inodes, ino)],
                    Fix::Reserved(ino, actual),
                );
            }
        }
        Ok(())
    }
}
