//! Leases: how long a node keeps a shard nobody renews, and its clock.
//!
//! Every copy a node holds has an expiry on the *node's own* clock: a put or a renewal sets
//! it to now + the lease. Owners never send times, only ask for renewal, so a skewed owner
//! clock cannot expire anything (and a node's clock only ever measures its own durations).
//! A copy past its expiry moves to the trash, where it is still served and can be renewed
//! back, and is deleted only after the trash period on top. The owner renews every copy it
//! references at a third of the lease ([`renew_every`]), so a live owner's copies never come
//! near their expiry, and one that is away (a laptop in a drawer) keeps everything for the
//! lease plus the trash period (74 days by default). Freed blocks are released at once, as
//! before; leases only collect what nobody is left to release: the shards of a vanished
//! owner, and surplus copies on holders that never came back.

use std::time::{Duration, SystemTime};

/// Default lease: 60 days (Tahoe-LAFS uses 31, and its users lose data when they are away
/// longer than that; a month of holidays must not cost a volume).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60 * 86_400);
/// Default trash period after expiry: 14 days (Storj keeps trash 7).
pub const DEFAULT_TRASH: Duration = Duration::from_secs(14 * 86_400);

/// A node's lease terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTerms {
    pub lease: Duration,
    pub trash: Duration,
}

impl Default for LeaseTerms {
    fn default() -> Self {
        LeaseTerms {
            lease: DEFAULT_LEASE,
            trash: DEFAULT_TRASH,
        }
    }
}

impl LeaseTerms {
    /// How often the node sweeps expired copies into the trash and empties it.
    pub fn sweep_every(&self) -> Duration {
        (self.lease.min(self.trash) / 8).clamp(Duration::from_secs(1), Duration::from_secs(3600))
    }
}

/// How often an owner renews the copies on a holder whose lease is `lease`.
pub fn renew_every(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_secs(1))
}

/// The node's clock in seconds since the epoch. `BITCLOUD_FAULT_CLOCK_SKEW_SECS` (signed)
/// shifts it, for tests that show skew between peers changes nothing.
pub fn now_secs() -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    now.saturating_add_signed(clock_skew())
}

fn clock_skew() -> i64 {
    static SKEW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *SKEW.get_or_init(|| {
        let skew = std::env::var("BITCLOUD_FAULT_CLOCK_SKEW_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if skew != 0 {
            tracing::warn!(target: "bitcloud::node", skew, "fault injection: this node's clock is shifted (BITCLOUD_FAULT_CLOCK_SKEW_SECS)");
        }
        skew
    })
}
