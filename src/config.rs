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
}

/// The `[mount]` table.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MountConfig {
    /// Threads that hash, encrypt and store full blocks in the background.
    pub seal_threads: usize,
    /// Seconds between checkpoints that make committed changes durable.
    pub checkpoint_secs: u64,
    /// FUSE request threads.
    pub fuse_threads: usize,
    /// MiB of written data that may wait in memory to be sealed, for all open files together.
    pub write_buffer_mib: u64,
    /// Seconds after which a partly written block is sealed even if nobody flushes it.
    pub writeback_secs: u64,
}

impl Default for MountConfig {
    fn default() -> Self {
        MountConfig {
            seal_threads: 2,
            checkpoint_secs: 2,
            fuse_threads: 4,
            write_buffer_mib: crate::volume::DEFAULT_WRITE_BUFFER >> 20,
            writeback_secs: 30,
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
# Threads answering FUSE requests (1-64).
fuse_threads = 4
# MiB of written data that may wait in memory to be encrypted, all open files together
# (16-65536). Random writes within this much data are patched in memory; beyond it they
# read, re-encrypt and store whole blocks. SIGHUP applies a change at once.
write_buffer_mib = 256
# Seconds after which a partly written block is encrypted and stored even if the file is
# not closed or fsynced (1-3600), as the kernel's dirty_expire does for disks: with the
# checkpoint, the most a crash can lose of data never fsynced.
writeback_secs = 30
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
        Ok(())
    }
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
    fn home_puts_everything_under_one_dir() {
        let p = Paths::resolve(Some(Path::new("/h"))).unwrap();
        assert_eq!(p.identity_file(), Path::new("/h/identity.age"));
        assert_eq!(p.volume_dir(), Path::new("/h/data/volume"));
        assert_eq!(p.control_socket(), Path::new("/h/run/control.sock"));
    }
}
