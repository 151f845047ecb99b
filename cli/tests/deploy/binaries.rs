//! The three binaries the image ships, and what their `--help` accepts.
//!
//! `mangahub` is this package's binary. `gateway` and `progress-service` are
//! other packages' binaries in the same target directory; cargo does not
//! build them for this test, so they are built (same profile) once per run,
//! which is a no-op when they are up to date and keeps them from going stale.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| build_services(&dir));
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.exists(), "{} is missing", path.display());
    path
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
