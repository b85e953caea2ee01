//! Where a passphrase comes from: `--passphrase-file`, else `BITCLOUD_PASSPHRASE`, else (only
//! when asked to and stdin is a terminal) a prompt with echo off.

use std::io::{BufRead, Write};
use std::path::Path;

use age::secrecy::SecretString;
use anyhow::{Context, Result, bail};

/// Loads the identity at `identity` (asking for its passphrase if it is protected and none was
/// given) and derives the volume keys.
pub fn load_keys(
    identity: &Path,
    passphrase_file: Option<&Path>,
) -> Result<crate::keys::VolumeKeys> {
    use crate::keys::{self, KeyError, VolumeKeys};
    let mut pass = given(passphrase_file)?;
    if pass.is_none() && keys::is_protected(identity)? {
        pass = prompt("Passphrase for the bitcloud identity: ")?;
    }
    match keys::load_identity(identity, pass.as_ref()) {
        Ok(id) => Ok(VolumeKeys::derive(id)),
        Err(e @ KeyError::WrongPassphrase { .. }) => bail!(e),
        Err(e) => Err(e.into()),
    }
}

/// The passphrase from a file or the environment, if one was given.
pub fn given(file: Option<&Path>) -> Result<Option<SecretString>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading passphrase file {}", f.display()))?;
        let line = text.lines().next().unwrap_or("").to_string();
        if line.is_empty() {
            bail!("passphrase file {} is empty", f.display());
        }
        return Ok(Some(SecretString::from(line)));
    }
    match std::env::var("BITCLOUD_PASSPHRASE") {
        Ok(p) if !p.is_empty() => Ok(Some(SecretString::from(p))),
        _ => Ok(None),
    }
}

/// Asks on the terminal (echo off). `None` when stdin is not a terminal.
pub fn prompt(question: &str) -> Result<Option<SecretString>> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } != 1 {
        return Ok(None);
    }
    eprint!("{question}");
    std::io::stderr().flush()?;
    // SAFETY: termios calls on stdin with a zeroed struct filled by tcgetattr.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    let have_term = unsafe { libc::tcgetattr(0, &mut term) } == 0;
    if have_term {
        let mut quiet = term;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if have_term {
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &term) };
    }
    eprintln!();
    read?;
    Ok(Some(SecretString::from(
        line.trim_end_matches(['\n', '\r']).to_string(),
    )))
}
