//! The deployment files, checked without a Docker engine or a cluster:
//! `docker-compose.yml`, the `Dockerfile` and the production template (`compose`), and
//! the Kubernetes manifests (`k8s`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

mod compose;
mod k8s;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn read(path: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(root().join(path)).map_err(|e| anyhow::anyhow!("{path}: {e}"))
}

/// Every variable the services read: the names the settings crate asks `Env` for.
pub fn settings_variables() -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(root().join("crates/settings/src"))? {
        let source = std::fs::read_to_string(entry?.path())?;
        let code = source.split("#[cfg(test)]").next().unwrap_or("");
        for literal in code.split('"').skip(1).step_by(2) {
            let looks_like_a_variable = literal.len() > 3
                && literal.contains('_')
                && literal
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if looks_like_a_variable || literal == "UPSTREAMS" {
                names.insert(literal.to_owned());
            }
        }
    }
    anyhow::ensure!(names.len() > 50, "found only {names:?}");
    Ok(names)
}

/// The binaries the workspace builds.
pub fn workspace_binaries() -> anyhow::Result<BTreeSet<String>> {
    let mut bins = BTreeSet::new();
    for manifest in [
        "crates/admin/Cargo.toml",
        "services/auth/Cargo.toml",
        "services/session/Cargo.toml",
        "services/audit/Cargo.toml",
        "services/gateway/Cargo.toml",
    ] {
        let text = read(manifest)?;
        for section in text.split("[[bin]]").skip(1) {
            if let Some(name) = section
                .lines()
                .find_map(|l| l.trim().strip_prefix("name = "))
            {
                bins.insert(name.trim_matches('"').to_owned());
            }
        }
    }
    Ok(bins)
}
