//! The user's own settings for `lull`: `$XDG_CONFIG_HOME/lull/config.toml` (else
//! `~/.config/lull/config.toml`), or the file named by `--config` / `LULL_CONFIG`.
//!
//! ```toml
//! coordinator = "https://lull.lab.example.org:7080"
//! coordinator_key = "sha256:..." # the coordinator's HTTPS key, which `lull` then pins
//! token = "lull_..."            # your token (keep the file private: chmod 600)
//! key = "keys/me"               # the signing key for `lull submit`, relative to this file
//! ```
//!
//! Flags and environment variables (`--coordinator`/`LULL_COORDINATOR`,
//! `--coordinator-key`/`LULL_COORDINATOR_KEY`, `--token`/`LULL_TOKEN`, `--key`/`LULL_KEY`) win
//! over the file. Every field may be left out; unknown fields are an
//! error, so a typo does not go unnoticed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

/// What the file may say.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The coordinator's address.
    pub coordinator: Option<String>,
    /// The sha256 of the coordinator's HTTPS key, to pin.
    pub coordinator_key: Option<String>,
    /// The user's token.
    pub token: Option<String>,
    /// The signing key for `lull submit` (relative paths are relative to the file).
    pub key: Option<PathBuf>,
}

/// The default place of the file.
pub fn default_path() -> PathBuf {
    crate::config_dir().join("config.toml")
}

/// Reads the file: `explicit` when given (it must exist), else the default one if it exists.
pub fn load(explicit: Option<&Path>) -> anyhow::Result<UserConfig> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => {
            let p = default_path();
            if !p.exists() {
                return Ok(UserConfig::default());
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the configuration {}", path.display()))?;
    let mut config: UserConfig = toml::from_str(&text)
        .with_context(|| format!("reading the configuration {}", path.display()))?;
    if let Some(key) = &config.key
        && key.is_relative()
    {
        let base = path.parent().unwrap_or(Path::new("."));
        config.key = Some(base.join(key));
    }
    #[cfg(unix)]
    if config.token.is_some() {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} holds a token and others may read it: chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_and_relative_keys_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "coordinator = \"http://c:7080\"\ntoken = \"lull_x\"\nkey = \"keys/me\"\n",
        )
        .unwrap();
        let config = load(Some(&path)).unwrap();
        assert_eq!(config.coordinator.as_deref(), Some("http://c:7080"));
        assert_eq!(config.token.as_deref(), Some("lull_x"));
        assert_eq!(config.key, Some(dir.path().join("keys/me")));
    }

    #[test]
    fn unknown_fields_and_missing_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "tokne = \"lull_x\"\n").unwrap();
        let err = format!("{:#}", load(Some(&path)).unwrap_err());
        assert!(
            err.contains("config.toml") && err.contains("tokne"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            load(Some(&dir.path().join("none.toml"))).unwrap_err()
        );
        assert!(err.contains("none.toml"), "{err}");
    }
}
