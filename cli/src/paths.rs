//! Where the keystore lives.

use std::path::{Path, PathBuf};

use crate::failure::{Exit, Failure};

/// File name of the keystore inside its directory.
pub(crate) const STORE_FILE: &str = "keystore.db";

/// The keystore path: `--store` / `KEYWARD_STORE` if given (clap has already
/// merged the two), else `$XDG_DATA_HOME/keyward/keystore.db`, else
/// `~/.local/share/keyward/keystore.db`.
///
/// # Errors
/// When neither an explicit path nor a usable `XDG_DATA_HOME`/`HOME` exists.
pub(crate) fn store_path(explicit: Option<&Path>) -> Result<PathBuf, Failure> {
    let xdg = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    resolve(explicit, xdg.as_deref(), home.as_deref())
}

/// [`store_path`] with the environment passed in (testable).
fn resolve(
    explicit: Option<&Path>,
    xdg_data_home: Option<&Path>,
    home: Option<&Path>,
) -> Result<PathBuf, Failure> {
    if let Some(path) = explicit {
        if path.as_os_str().is_empty() {
            return Err(Failure::new(Exit::Usage, "the keystore path is empty")
                .hint("pass a file path with --store or KEYWARD_STORE"));
        }
        return Ok(path.to_path_buf());
    }
    // The XDG base-directory spec says relative values are invalid and must
    // be ignored.
    if let Some(xdg) = xdg_data_home.filter(|p| p.is_absolute()) {
        return Ok(xdg.join("keyward").join(STORE_FILE));
    }
    if let Some(home) = home.filter(|p| p.is_absolute()) {
        return Ok(home
            .join(".local")
            .join("share")
            .join("keyward")
            .join(STORE_FILE));
    }
    Err(Failure::new(
        Exit::Usage,
        "cannot tell where the keystore is: HOME is not set",
    )
    .hint("pass --store PATH or set KEYWARD_STORE"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            resolve(Some(&p("/s/k.db")), Some(&p("/xdg")), Some(&p("/home/u"))).expect("path"),
            p("/s/k.db")
        );
        assert_eq!(
            resolve(None, Some(&p("/xdg")), Some(&p("/home/u"))).expect("path"),
            p("/xdg/keyward/keystore.db")
        );
        assert_eq!(
            resolve(None, Some(&p("relative")), Some(&p("/home/u"))).expect("path"),
            p("/home/u/.local/share/keyward/keystore.db")
        );
        assert_eq!(
            resolve(None, None, Some(&p("/home/u"))).expect("path"),
            p("/home/u/.local/share/keyward/keystore.db")
        );
        let err = resolve(None, None, None).expect_err("no home");
        assert_eq!(err.code, Exit::Usage);
        assert!(resolve(Some(&p("")), None, None).is_err());
    }
}
