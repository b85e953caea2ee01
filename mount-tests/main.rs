//! Mount tests: the real `bitcloud` binary, a real FUSE mount in a temp dir, and real tools.
//! Run as root with /dev/fuse and fusermount3 (scripts/setup.sh installs what is needed).
//! Every mount is unmounted and its process killed on drop, also when a test fails.

mod cli;
mod dirs;
mod export;
mod faults;
mod fsck_pool;
mod fsx;
mod harness;
mod heal;
mod leases;
mod mounting;
mod nodes;
mod pool;
mod posix;
mod private;
mod recover;
mod service;
mod tools;
