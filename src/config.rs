//! Where bitcloud keeps things, and `config.toml`.
//!
//! With `--home DIR` (or `BITCLOUD_HOME`) everything lives under DIR: `config.toml` and
//! `identity.age` at the top, the volume in `data/`, sockets in `run/`. Without it, the XDG
//! base directories: config in `$XDG_CONFIG_HOME/bitcloud`, data in `$XDG_DATA_HOME/bitcloud`,
//! sockets in `$XDG_RUNTIME_DIR/bitcloud` (or `data/run` when there is no runtime dir).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The directories of one bitcloud installation.
#[derive(Clone, Debug)]
pub struct Paths {
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Paths {
    /// Resolves the directories from `--home` or the XDG environment.
    pub fn resolve(home: Option<&Path>) -> Result<Paths, ConfigError> {
        if let Some(h) = home {
            let h = if h.is_absolute() {
                h.to_path_buf()
            } else {
                std::env::current_dir()
                    .map_err(|e| ConfigError::Io(h.into(), e))?
                    .join(h)
            };
            return Ok(Paths {
                config_dir: h.clone(),
                data_dir: h.join("data"),
                runtime_dir: h.join("run"),
            });
        }
        let env_dir = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let user_home = env_dir("HOME").ok_or(ConfigError::NoHome)?;
        let config = env_dir("XDG_CONFIG_HOME")
            .unwrap_or_else(|| user_home.join(".config"))
            .join("bitcloud");
        let data = env_dir("XDG_DATA_HOME")
            .unwrap_or_else(|| user_home.join(".local/share"))
            .join("bitcloud");
        let runtime = env_dir("XDG_RUNTIME_DIR")
            .map(|d| d.join("bitcloud"))
            .unwrap_or_else(|| data.join("run"));
        Ok(Paths {
            config_dir: config,
            data_dir: data,
            runtime_dir: runtime,
        })
    }

    pub fn identity_file(&self) -> PathBuf {
        self.config_dir.join("identity.age")
    }

    pub fn config_file(&self) -> PathBuf {
        self.config_dir.join("config.toml")
    }

    /// The volume's metadata database and block store.
    pub fn volume_dir(&self) -> PathBuf {
        self.data_dir.join("volume")
    }

    /// Held (flock) by the process that has the volume mounted.
    pub fn lock_file(&self) -> PathBuf {
        self.data_dir.join("volume.lock")
    }

    /// The running mount's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.runtime_dir.join("control.sock")
    }

    /// This machine's libp2p key (the mount's node and `bitcloud node` share it: one
    /// machine, one peer id).
    pub fn node_key_file(&self) -> PathBuf {
        self.data_dir.join("node.key")
    }

    /// Shards stored for other peers.
    pub fn shard_dir(&self) -> PathBuf {
        self.data_dir.join("shards")
    }

    /// The running `bitcloud node`'s control socket.
    pub fn node_socket(&self) -> PathBuf {
        self.runtime_dir.join("node.sock")
    }

    /// Held (flock) by a running `bitcloud node`.
    pub fn node_lock_file(&self) -> PathBuf {
        self.data_dir.join("node.lock")
    }
}

/// Problems with paths or `config.toml`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("neither --home, BITCLOUD_HOME nor HOME is set: cannot tell where to keep the volume")]
    NoHome,
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Settings read from `config.toml`. Every key is optional; unknown keys are errors.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mount: MountConfig,
    pub node: NodeConfig,
    pub pool: PoolConfig,
    pub cache: CacheConfig,
}

/// The `[node]` table: this machine's libp2p node (the mount's, or `bitcloud node`'s).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Multiaddrs to listen on; empty: every interface on the default port (TCP and QUIC).
    pub listen: Vec<String>,
    /// Peers to connect to at start and keep connected (`bitcloud peers add` adds here).
    pub bootstrap: Vec<String>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Space this machine stores for others ("0": none; "50G", ...).
    pub offer: String,
    /// Most of the offer one owner may use, in percent (1-100).
    pub offer_per_owner_percent: u8,
    /// A private pool: the peer ids that may connect (empty: an open pool).
    pub allow: Vec<String>,
    /// Seconds a copy stored here is kept without its owner renewing it.
    pub lease_secs: u64,
    /// Seconds an expired copy stays in the trash (still renewable) before deletion.
    pub trash_secs: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: true,
            offer: "0".into(),
            offer_per_owner_percent: 50,
            allow: Vec::new(),
            lease_secs: crate::node::lease::DEFAULT_LEASE.as_secs(),
            trash_secs: crate::node::lease::DEFAULT_TRASH.as_secs(),
        }
    }
}

/// The `[pool]` table: how the mount uses the pool.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Erasure scheme for blocks placed from now on, "K+M"; unset: the volume's (`init
    /// --shards`).
    pub shards: Option<String>,
    /// Seconds a read from the pool may take before it fails with EIO.
    pub read_timeout_secs: u64,
    /// With `mount.sync = "remote"`: seconds fsync waits for the pool before EIO.
    pub sync_timeout_secs: u64,
    /// Seconds between walks of the repair checker.
    pub repair_interval_secs: u64,
    /// Seconds a peer may be silent before its shards count as missing and are rebuilt.
    pub repair_grace_secs: u64,
    /// Live shards above K below which a block is repaired; unset: M (any missing shard).
    pub repair_margin: Option<u8>,
    /// Seconds between rounds of audits (holders prove they keep random shards).
    pub audit_interval_secs: u64,
    /// Seconds between publications of the volume's metadata to the pool, when it changed.
    pub backup_secs: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            shards: None,
            read_timeout_secs: 5,
            sync_timeout_secs: 60,
            repair_interval_secs: 300,
            repair_grace_secs: 3600,
            repair_margin: None,
            audit_interval_secs: 600,
            backup_secs: 60,
        }
    }
}

/// The `[cache]` table: the local copies of blocks.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most space for block files on this machine ("20G"); unset: no limit. Only blocks the
    /// pool holds in full are ever evicted.
    pub size: Option<String>,
}

/// Parses an erasure scheme "K+M" (K data, M parity shards).
pub fn parse_shards(s: &str) -> Result<(u8, u8), String> {
    let bad = || format!("{s:?} is not a shard scheme: expected K+M, e.g. 4+4 or 3+3");
    let (k, m) = s.trim().split_once('+').ok_or_else(bad)?;
    let k: u8 = k.trim().parse().map_err(|_| bad())?;
    let m: u8 = m.trim().parse().map_err(|_| bad())?;
    if !(1..=32).contains(&k) || !(1..=32).contains(&m) {
        return Err(format!(
            "{s:?}: K and M must each be 1 to 32 (K shards rebuild a block, M may be lost)"
        ));
    }
    Ok((k, m))
}

/// The `[mount]` table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MountConfig {
    /// Threads that hash, encrypt and store full blocks in the background.
    pub seal_threads: usize,
    /// Seconds between checkpoints that make committed changes durable.
    pub checkpoint_secs: u64,
    /// Threads reading FUSE requests. Requests that may wait (fsync, reads from the pool,
    /// writes held by the write budget) are answered on threads of their own either way.
    pub fuse_threads: usize,
    /// MiB of written data that may wait in memory to be sealed, for all open files together.
    pub write_buffer_mib: u64,
    /// Seconds after which a partly written block is sealed even if nobody flushes it.
    pub writeback_secs: u64,
    /// "local": fsync returns once data is on this machine's disk; "remote": also once every
    /// block of the file has K+1 shards in the pool.
    pub sync: String,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            seal_threads: 2,
            checkpoint_secs: 2,
            fuse_threads: 1,
            write_buffer_mib: crate::volume::DEFAULT_WRITE_BUFFER >> 20,
            writeback_secs: 30,
            sync: "local".into(),
        }
    }
}

/// The commented default `config.toml` written by `init`.
pub const DEFAULT_CONFIG: &str = "\
# bitcloud configuration. Every key is optional; the values shown are the defaults.
# Command-line flags override this file. Unknown keys are errors.

[mount]
# Threads that hash, encrypt and store full blocks in the background (1-64).
seal_threads = 2
# Seconds between checkpoints: changes older than this survive a crash even without fsync
# (fsync is always durable at once). 1-3600.
checkpoint_secs = 2
# Threads reading FUSE requests (1-64). One is fastest: the kernel gives each request to the
# reader that waited longest, so with more every request meets a cold thread. Requests that
# may wait (fsync, reads from the pool, writes held by the write buffer) are answered on
# threads of their own whatever this says.
fuse_threads = 1
# MiB of written data that may wait in memory to be encrypted, all open files together
# (16-65536). Random writes within this much data are patched in memory; beyond it they
# read, re-encrypt and store whole blocks. SIGHUP applies a change at once.
write_buffer_mib = 256
# Seconds after which a partly written block is encrypted and stored even if the file is
# not closed or fsynced (1-3600), as the kernel's dirty_expire does for disks: with the
# checkpoint, the most a crash can lose of data never fsynced.
writeback_secs = 30
# \"local\": fsync returns once the data is on this machine's disk. \"remote\": fsync also
# waits until every block of the file has K+1 shards on distinct peers (pool.sync_timeout_secs,
# then EIO).
sync = \"local\"

[node]
# Multiaddrs to listen on; empty: every interface on port 4737 (TCP and QUIC), or a free
# port if that one is taken. Port 0 picks a free port; `bitcloud status` shows it.
listen = []
# Peers to connect to and keep connected; `bitcloud peers add MULTIADDR` adds to this.
bootstrap = []
# Find peers on the local network by multicast DNS.
mdns = true
# Space this machine stores for others (\"0\": none; e.g. \"50G\").
offer = \"0\"
# Most of that one owner (one peer) may use, in percent: one volume cannot take a node's
# whole offer unless this says 100.
offer_per_owner_percent = 50
# A private pool: the peer ids (12D3Koo...) allowed to connect; everyone else is
# disconnected and gets no answer. Every member lists the others (a node its owners' mounts,
# a mount its nodes). Empty: an open pool.
allow = []
# Seconds a shard stored here for someone is kept without its owner renewing the lease
# (owners renew every third of it while they run): 60 days. Then it moves to the trash
# (still renewable) for trash_secs (14 days) and is deleted. Durations on this machine's
# own clock: the owners' clocks play no part.
lease_secs = 5184000
trash_secs = 1209600

[pool]
# Erasure scheme for blocks placed from now on, K+M (any K of K+M shards rebuild a block).
# Unset: the volume's own, chosen at init (--shards, default 4+4).
# shards = \"3+3\"
# Seconds a read may wait for the pool before it fails with EIO.
read_timeout_secs = 5
# With mount.sync = \"remote\": seconds fsync waits for the pool before EIO.
sync_timeout_secs = 60
# Seconds between checks of every block's shards (blocks short of shards are repaired;
# a read that finds a lost shard starts a check at once).
repair_interval_secs = 300
# Seconds a peer may stay silent before its shards count as missing and are rebuilt on
# other peers (a reboot or a short outage should not cause repair traffic).
repair_grace_secs = 3600
# A block is repaired when fewer than K + repair_margin of its shards are live. Unset: M,
# i.e. as soon as any shard is missing past the grace period (docs/pool.md).
# repair_margin = 2
# Seconds between rounds of audits: each round, 16 random shards' holders prove they still
# have 32 random 1 KiB chunks of them (about 1 MiB of proofs per round).
audit_interval_secs = 600
# Seconds between publications of the volume's metadata (names, block maps, placements;
# encrypted and signed) to the pool, when it changed: what `bitcloud recover` brings back
# on a new machine from the identity file alone. Unmount publishes too.
backup_secs = 60

[cache]
# Most space for block files on this machine (e.g. \"20G\"); unset: no limit. Only blocks the
# pool holds at full redundancy are evicted, least recently used first.
# size = \"20G\"
";

impl Config {
    /// Reads `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(e) => return Err(ConfigError::Io(path.into(), e)),
        };
        Config::parse(path, &text)
    }

    /// Parses and validates the text of a config file (errors name the key and line).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            match line {
                Some(l) => invalid(format!("line {l}: {}", e.message())),
                None => invalid(e.message().to_string()),
            }
        })?;
        config
            .check_ranges()
            .map_err(|(key, message)| match line_of(text, key) {
                Some(l) => invalid(format!("line {l}: {message}")),
                None => invalid(message),
            })?;
        Ok(config)
    }

    /// Checks every value's range; the error names the key.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.check_ranges()
            .map_err(|(_, message)| ConfigError::Invalid {
                path: path.into(),
                message,
            })
    }

    /// The first value out of range, as (key, message).
    fn check_ranges(&self) -> Result<(), (&'static str, String)> {
        let m = &self.mount;
        let check = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err((
                    key,
                    format!("mount.{key} = {v} is out of range {lo}..={hi}"),
                ))
            } else {
                Ok(())
            }
        };
        check("seal_threads", m.seal_threads as u64, 1, 64)?;
        check("checkpoint_secs", m.checkpoint_secs, 1, 3600)?;
        check("fuse_threads", m.fuse_threads as u64, 1, 64)?;
        check("write_buffer_mib", m.write_buffer_mib, 16, 65536)?;
        check("writeback_secs", m.writeback_secs, 1, 3600)?;
        if m.sync != "local" && m.sync != "remote" {
            return Err((
                "sync",
                format!(
                    "mount.sync = {:?}: expected \"local\" or \"remote\"",
                    m.sync
                ),
            ));
        }
        crate::units::parse_bytes(&self.node.offer)
            .map_err(|e| ("offer", format!("node.offer: {e}")))?;
        for a in &self.node.allow {
            if a.parse::<libp2p::PeerId>().is_err() {
                return Err(("allow", format!("node.allow: {a:?} is not a peer id")));
            }
        }
        if !(1..=100).contains(&self.node.offer_per_owner_percent) {
            return Err((
                "offer_per_owner_percent",
                format!(
                    "node.offer_per_owner_percent = {} is out of range 1..=100",
                    self.node.offer_per_owner_percent
                ),
            ));
        }
        for (key, v) in [
            ("lease_secs", self.node.lease_secs),
            ("trash_secs", self.node.trash_secs),
        ] {
            if !(1..=10 * 365 * 86400).contains(&v) {
                return Err((
                    key,
                    format!("node.{key} = {v} is out of range 1..=315360000 (10 years)"),
                ));
            }
        }
        if let Some(s) = &self.pool.shards {
            parse_shards(s).map_err(|e| ("shards", format!("pool.shards: {e}")))?;
        }
        let p = &self.pool;
        let check_pool = |key: &'static str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err((key, format!("pool.{key} = {v} is out of range {lo}..={hi}")))
            } else {
                Ok(())
            }
        };
        check_pool("read_timeout_secs", p.read_timeout_secs, 1, 600)?;
        check_pool("sync_timeout_secs", p.sync_timeout_secs, 1, 86400)?;
        check_pool("repair_interval_secs", p.repair_interval_secs, 1, 86400)?;
        check_pool("repair_grace_secs", p.repair_grace_secs, 1, 30 * 86400)?;
        check_pool("audit_interval_secs", p.audit_interval_secs, 1, 86400)?;
        check_pool("backup_secs", p.backup_secs, 1, 86400)?;
        if p.repair_margin == Some(0) {
            return Err((
                "repair_margin",
                "pool.repair_margin = 0 would repair only lost blocks; use 1 or more".into(),
            ));
        }
        if let Some(s) = &self.cache.size {
            crate::units::parse_bytes(s).map_err(|e| ("size", format!("cache.size: {e}")))?;
        }
        Ok(())
    }
}

/// Adds `addr` to `node.bootstrap` in the config file at `path` (created if missing),
/// keeping the rest of the file (comments included) as it is. Returns `false` if it was
/// there already.
pub fn add_bootstrap(path: &Path, addr: &str) -> Result<bool, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ConfigError::Io(path.into(), e)),
    };
    let config = Config::parse(path, &text)?;
    if config.node.bootstrap.iter().any(|b| b == addr) {
        return Ok(false);
    }
    let mut list = config.node.bootstrap.clone();
    list.push(addr.to_string());
    let line = format!(
        "bootstrap = [{}]",
        list.iter()
            .map(|a| toml::Value::String(a.clone()).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let is_header = |l: &str| l.trim_start().starts_with('[');
    let node_at = lines.iter().position(|l| l.trim() == "[node]");
    match node_at {
        Some(h) => {
            let end = lines[h + 1..]
                .iter()
                .position(|l| is_header(l))
                .map_or(lines.len(), |i| h + 1 + i);
            let key_at = (h + 1..end).find(|&i| {
                lines[i]
                    .trim_start()
                    .strip_prefix("bootstrap")
                    .is_some_and(|r| r.trim_start().starts_with('='))
            });
            match key_at {
                Some(k) => {
                    // The old value may span lines: up to the line closing the array.
                    let close = (k..end).find(|&i| lines[i].contains(']')).unwrap_or(k);
                    lines.splice(k..=close, [line]);
                }
                None => lines.insert(h + 1, line),
            }
        }
        None => {
            lines.push(String::new());
            lines.push("[node]".into());
            lines.push(line);
        }
    }
    let mut new_text = lines.join("\n");
    new_text.push('\n');
    // Never write a file that does not parse back to what was meant.
    let check = Config::parse(path, &new_text)?;
    if check.node.bootstrap != list {
        return Err(ConfigError::Invalid {
            path: path.into(),
            message: "could not add to node.bootstrap without changing other settings; edit the file by hand".into(),
        });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ConfigError::Io(dir.into(), e))?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, new_text).map_err(|e| ConfigError::Io(tmp.clone(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| ConfigError::Io(path.into(), e))?;
    Ok(true)
}

/// The 1-based line of `text` that sets `key` (`key = ...`), if any.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_to_defaults() {
        assert_eq!(
            Config::parse(Path::new("c"), DEFAULT_CONFIG).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = Config::parse(Path::new("c.toml"), "[mount]\nseal_threads = 2\nsael = 1\n")
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("line 3") && msg.contains("sael"), "{msg}");
    }

    #[test]
    fn out_of_range_value_is_named() {
        let e = Config::parse(Path::new("c.toml"), "[mount]\nseal_threads = 0\n").unwrap_err();
        assert!(
            e.to_string().contains("line 2: mount.seal_threads = 0"),
            "{e}"
        );
        let e =
            Config::parse(Path::new("c.toml"), "[mount]\n\n write_buffer_mib  = 1\n").unwrap_err();
        assert!(
            e.to_string().contains("line 3: mount.write_buffer_mib = 1"),
            "{e}"
        );
        let e =
            Config::parse(Path::new("c.toml"), "[mount]\ncheckpoint_secs = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn bootstrap_peers_are_added_keeping_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.toml");
        std::fs::write(&p, DEFAULT_CONFIG).unwrap();
        assert!(add_bootstrap(&p, "/ip4/127.0.0.2/tcp/4737/p2p/a").unwrap());
        assert!(!add_bootstrap(&p, "/ip4/127.0.0.2/tcp/4737/p2p/a").unwrap());
        assert!(add_bootstrap(&p, "/ip4/127.0.0.3/tcp/4737/p2p/b").unwrap());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("# bitcloud configuration"), "comments kept");
        let c = Config::load(&p).unwrap();
        assert_eq!(c.node.bootstrap.len(), 2);
        assert_eq!(c.mount, MountConfig::default());
        // No file, or no [node] table: made.
        let q = dir.path().join("new.toml");
        assert!(add_bootstrap(&q, "/ip4/127.0.0.4/tcp/1/p2p/c").unwrap());
        assert_eq!(Config::load(&q).unwrap().node.bootstrap.len(), 1);
        let r = dir.path().join("mount-only.toml");
        std::fs::write(&r, "[mount]\nseal_threads = 3\n").unwrap();
        add_bootstrap(&r, "/ip4/127.0.0.4/tcp/1/p2p/c").unwrap();
        let c = Config::load(&r).unwrap();
        assert_eq!((c.mount.seal_threads, c.node.bootstrap.len()), (3, 1));
    }

    #[test]
    fn pool_settings_are_checked() {
        assert_eq!(parse_shards("3+3").unwrap(), (3, 3));
        assert!(parse_shards("3").is_err());
        assert!(parse_shards("0+2").is_err());
        let e = Config::parse(Path::new("c.toml"), "[pool]\nshards = \"4-4\"\n").unwrap_err();
        assert!(e.to_string().contains("pool.shards"), "{e}");
        let e = Config::parse(Path::new("c.toml"), "[node]\noffer = \"lots\"\n").unwrap_err();
        assert!(e.to_string().contains("node.offer"), "{e}");
        let e = Config::parse(Path::new("c.toml"), "[mount]\nsync = \"later\"\n").unwrap_err();
        assert!(e.to_string().contains("mount.sync"), "{e}");
        let e = Config::parse(Path::new("c.toml"), "[cache]\nsize = \"1Q\"\n").unwrap_err();
        assert!(e.to_string().contains("cache.size"), "{e}");
    }

    #[test]
    fn home_puts_everything_under_one_dir() {
        let p = Paths::resolve(Some(Path::new("/h"))).unwrap();
        assert_eq!(p.identity_file(), Path::new("/h/identity.age"));
        assert_eq!(p.volume_dir(), Path::new("/h/data/volume"));
        assert_eq!(p.control_socket(), Path::new("/h/run/control.sock"));
    }
}
