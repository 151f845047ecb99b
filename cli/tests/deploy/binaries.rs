//! The three binaries the image ships, and what their `--help` accepts.
//!
//! `mangahub` is this package's binary. `gateway` and `progress-service` are
//! other packages' binaries in the same target directory: `cargo test
//! --workspace` builds them (their packages have integration tests), but
//! `cargo test -p mangahub` does not, so when one is missing or older than
//! the sources it is built here, with the same profile.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

pub const MANGAHUB: &str = "mangahub";
pub const GATEWAY: &str = "gateway";
pub const PROGRESS_SERVICE: &str = "progress-service";

pub fn path(name: &str) -> PathBuf {
    let mangahub = PathBuf::from(env!("CARGO_BIN_EXE_mangahub"));
    if name == MANGAHUB {
        return mangahub;
    }
    assert!(
        [GATEWAY, PROGRESS_SERVICE].contains(&name),
        "not one of our binaries: {name:?}"
    );
    let dir = mangahub.parent().expect("binary directory").to_path_buf();
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    static BUILT: OnceLock<()> = OnceLock::new();
    if !is_fresh(&path) {
        BUILT.get_or_init(|| build_services(&dir));
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// Whether `binary` exists and is newer than every source it is built from.
fn is_fresh(binary: &Path) -> bool {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return false;
    };
    let root = crate::compose::repo_root();
    let sources = [
        "Cargo.lock",
        "proto",
        "migrations",
        "model/src",
        "model/Cargo.toml",
        "ops/src",
        "ops/Cargo.toml",
        "progress-service/src",
        "progress-service/Cargo.toml",
        "gateway/src",
        "gateway/Cargo.toml",
    ];
    sources
        .iter()
        .all(|s| newest_modification(&root.join(s)).is_none_or(|m| m <= built))
}

fn newest_modification(path: &Path) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta.modified().ok();
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter_map(|entry| newest_modification(&entry.path()))
        .max()
}

fn build_services(bin_dir: &Path) {
    let Ok(cargo) = std::env::var("CARGO") else {
        // Run outside cargo: use whatever is there.
        return;
    };
    let mut cmd = Command::new(cargo);
    cmd.current_dir(crate::compose::repo_root())
        .args([
            "build",
            "--quiet",
            "--locked",
            "-p",
            GATEWAY,
            "-p",
            PROGRESS_SERVICE,
        ])
        .args(["--bin", GATEWAY, "--bin", PROGRESS_SERVICE]);
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    if let Some(target_dir) = bin_dir.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    let out = cmd.output().expect("running cargo build");
    assert!(
        out.status.success(),
        "building {GATEWAY} and {PROGRESS_SERVICE} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `<binary> <args…> --help`, which must succeed.
pub fn help(name: &str, args: &[&str]) -> String {
    let out = Command::new(path(name))
        .args(args)
        .arg("--help")
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(
        out.status.success(),
        "`{name} {} --help` failed (so {args:?} is not accepted):\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// Environment variables a clap help text lists (`[env: NAME=…]` / `[env: NAME]`).
pub fn env_names(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_owned)
        .collect()
}

/// Long flags (`--name`) a clap help text lists.
pub fn flags(help: &str) -> BTreeSet<String> {
    help.split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.trim_end_matches([',', '.', '`', ')'])
                .split(['=', '<', '['])
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Flags used in an argument list (`--flag value`, `--flag=value`).
pub fn flags_used(args: &[String]) -> BTreeSet<String> {
    args.iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or_default().to_owned())
        .collect()
}
