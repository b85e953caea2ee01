//! `bitcloud service install [MOUNTPOINT]` / `bitcloud service uninstall [MOUNTPOINT]`: the
//! systemd user unit that keeps the volume mounted. Writes the unit (pointing at this very
//! binary, with this `--home`) to `~/.config/systemd/user/`, then enables and starts it when a
//! user manager is running, or prints the `systemctl --user` commands to do so.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::config::Paths;

/// The unit shipped in packaging/ (the Debian package installs it as is).
pub const UNIT_TEMPLATE: &str = include_str!("../../packaging/systemd/bitcloud-mount@.service");
const UNIT_NAME: &str = "bitcloud-mount@.service";
/// The storage node's unit.
pub const NODE_UNIT_TEMPLATE: &str = include_str!("../../packaging/systemd/bitcloud-node.service");
const NODE_UNIT_NAME: &str = "bitcloud-node.service";

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Write the systemd user unit and enable it for MOUNTPOINT (default ~/cloud).
    Install(MountpointArg),
    /// Stop and disable the unit for MOUNTPOINT and remove the unit file.
    Uninstall(MountpointArg),
}

#[derive(Debug, Args)]
pub struct MountpointArg {
    /// Where the volume is mounted (created if missing).
    pub mountpoint: Option<PathBuf>,
    /// Only write or remove files and print the systemctl commands; run nothing.
    #[arg(long)]
    pub no_systemctl: bool,
    /// The storage node's unit (`bitcloud node`) instead of the mount's.
    #[arg(long, conflicts_with = "mountpoint")]
    pub node: bool,
}

/// `systemd-escape --path`: the instance name systemd derives from a path.
pub fn escape_path(path: &Path) -> String {
    let s = path.to_string_lossy();
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// One argument of an `ExecStart=` line: double-quoted (so spaces stay inside it), with `\`
/// and `"` escaped for systemd's parser and `%` doubled so it is not read as a specifier.
fn exec_arg(path: &Path) -> Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
    if text.contains('\n') {
        bail!("{text:?} contains a newline: it cannot go into a unit file");
    }
    let escaped = text
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    Ok(format!("\"{escaped}\""))
}

/// The unit text for this binary and home. The home must be absolute: the service does not
/// run in the directory `service install` was run from.
pub fn unit_text(exe: &Path, home: Option<&Path>) -> Result<String> {
    Ok(UNIT_TEMPLATE.replace("/usr/bin/bitcloud", &exec_command(exe, home)?))
}

/// The storage node's unit text for this binary and home.
pub fn node_unit_text(exe: &Path, home: Option<&Path>) -> Result<String> {
    Ok(NODE_UNIT_TEMPLATE.replace("/usr/bin/bitcloud", &exec_command(exe, home)?))
}

fn exec_command(exe: &Path, home: Option<&Path>) -> Result<String> {
    let mut cmd = exec_arg(exe)?;
    if let Some(h) = home {
        if !h.is_absolute() {
            bail!("--home {} must be an absolute path here", h.display());
        }
        cmd.push_str(&format!(" --home {}", exec_arg(h)?));
    }
    Ok(cmd)
}

fn user_unit_dir() -> Result<PathBuf> {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set")?;
    Ok(config.join("systemd/user"))
}

fn user_manager_running() -> bool {
    Command::new("systemctl")
        .args(["--user", "is-system-running"])
        .output()
        .map(|o| !o.stdout.is_empty() && !String::from_utf8_lossy(&o.stdout).contains("offline"))
        .unwrap_or(false)
}

/// `arg` as a shell word a user can paste (single-quoted if it has anything unusual, such
/// as the `\x20` systemd-escape makes of a space).
fn shell_word(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

fn systemctl(args: &[&str], run: bool) -> Result<()> {
    let words: Vec<String> = args.iter().map(|a| shell_word(a)).collect();
    println!("  systemctl --user {}", words.join(" "));
    if run {
        let status = Command::new("systemctl")
            .arg("--user")
            .args(args)
            .status()?;
        if !status.success() {
            bail!("systemctl --user {} failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

fn mountpoint_of(arg: &MountpointArg) -> Result<PathBuf> {
    let p = match &arg.mountpoint {
        Some(p) => p.clone(),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join("cloud"),
    };
    if p.is_absolute() {
        Ok(p)
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

pub fn run(paths: &Paths, home: Option<&Path>, args: ServiceArgs) -> Result<()> {
    // The unit needs the home as resolved here (absolute), not as typed.
    let home = home.map(|_| paths.config_dir.as_path());
    let dir = user_unit_dir()?;
    let unit_path = dir.join(UNIT_NAME);
    match args.action {
        ServiceAction::Install(a) if a.node => {
            let unit_path = dir.join(NODE_UNIT_NAME);
            let exe = std::env::current_exe().context("finding this binary")?;
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&unit_path, node_unit_text(&exe, home)?)
                .with_context(|| format!("writing {}", unit_path.display()))?;
            println!("bitcloud: wrote {}", unit_path.display());
            let run = !a.no_systemctl && user_manager_running();
            println!("{} the node:", if run { "Starting" } else { "To start" });
            systemctl(&["daemon-reload"], run)?;
            systemctl(&["enable", "--now", NODE_UNIT_NAME], run)?;
            println!("Logs: journalctl --user -u {NODE_UNIT_NAME}   Status: bitcloud status");
        }
        ServiceAction::Uninstall(a) if a.node => {
            let unit_path = dir.join(NODE_UNIT_NAME);
            let run = !a.no_systemctl && user_manager_running();
            println!("{} the node:", if run { "Stopping" } else { "To stop" });
            systemctl(&["disable", "--now", NODE_UNIT_NAME], run)?;
            match std::fs::remove_file(&unit_path) {
                Ok(()) => println!("bitcloud: removed {}", unit_path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("bitcloud: no unit file at {}", unit_path.display())
                }
                Err(e) => return Err(e.into()),
            }
            systemctl(&["daemon-reload"], run)?;
        }
        ServiceAction::Install(a) => {
            if !paths.identity_file().exists() {
                bail!("not initialised: run `bitcloud init` before installing the service");
            }
            let mnt = mountpoint_of(&a)?;
            std::fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
            let exe = std::env::current_exe().context("finding this binary")?;
            std::fs::create_dir_all(&dir)?;
            std::fs::write(&unit_path, unit_text(&exe, home)?)
                .with_context(|| format!("writing {}", unit_path.display()))?;
            let instance = format!("bitcloud-mount@{}.service", escape_path(&mnt));
            println!("bitcloud: wrote {}", unit_path.display());
            let run = !a.no_systemctl && user_manager_running();
            println!("{} the service:", if run { "Starting" } else { "To start" });
            systemctl(&["daemon-reload"], run)?;
            systemctl(&["enable", "--now", &instance], run)?;
            println!(
                "Logs: journalctl --user -u {}   Status: bitcloud status",
                shell_word(&instance)
            );
        }
        ServiceAction::Uninstall(a) => {
            let mnt = mountpoint_of(&a)?;
            let instance = format!("bitcloud-mount@{}.service", escape_path(&mnt));
            let run = !a.no_systemctl && user_manager_running();
            println!("{} the service:", if run { "Stopping" } else { "To stop" });
            systemctl(&["disable", "--now", &instance], run)?;
            match std::fs::remove_file(&unit_path) {
                Ok(()) => println!("bitcloud: removed {}", unit_path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("bitcloud: no unit file at {}", unit_path.display())
                }
                Err(e) => return Err(e.into()),
            }
            systemctl(&["daemon-reload"], run)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd_escape_path() {
        assert_eq!(escape_path(Path::new("/home/ann/cloud")), "home-ann-cloud");
        assert_eq!(
            escape_path(Path::new("/home/ann/my cloud/")),
            "home-ann-my\\x20cloud"
        );
        assert_eq!(
            escape_path(Path::new("/.hidden/x-y")),
            "\\x2ehidden-x\\x2dy"
        );
        assert_eq!(escape_path(Path::new("/")), "-");
    }

    #[test]
    fn unit_points_at_this_binary_and_home() {
        let t = unit_text(Path::new("/opt/bc"), Some(Path::new("/srv/h"))).unwrap();
        assert!(
            t.contains("ExecStart=\"/opt/bc\" --home \"/srv/h\" mount %f"),
            "{t}"
        );
        assert!(t.contains("Type=notify"));
    }

    #[test]
    fn printed_commands_survive_a_shell() {
        assert_eq!(
            shell_word("bitcloud-mount@home-ann-cloud.service"),
            "bitcloud-mount@home-ann-cloud.service"
        );
        assert_eq!(shell_word("a\\x20b"), "'a\\x20b'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }

    #[test]
    fn awkward_paths_are_quoted_and_escaped_for_systemd() {
        let t = unit_text(
            Path::new("/opt/my apps/bc"),
            Some(Path::new("/home/ann/100% \"cloud\"")),
        )
        .unwrap();
        assert!(
            t.contains(
                "ExecStart=\"/opt/my apps/bc\" --home \"/home/ann/100%% \\\"cloud\\\"\" mount %f"
            ),
            "{t}"
        );
        assert!(unit_text(Path::new("/bc"), Some(Path::new("rel/home"))).is_err());
        assert!(unit_text(Path::new("/b\nc"), None).is_err());
    }
}
