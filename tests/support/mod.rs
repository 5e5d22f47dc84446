//! What every end-to-end test needs: the repository's root, and the workspace's binaries
//! built by the same cargo, profile and target directory as the test itself.
#![allow(dead_code)] // each test target uses part of it

pub mod cli;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root (this crate is its `tests/` folder).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The path of workspace binary `bin`, built. Cargo gives a test only its own package's
/// binaries (`CARGO_BIN_EXE_*`), so this runs `cargo test --workspace --no-run`, the build
/// step of the test run itself (same profile, features and target directory): after
/// `cargo test --workspace` or `cargo nextest run --workspace` it compiles nothing, so it never
/// replaces a binary another test is running. Run alone, it builds the workspace's tests.
pub fn binary(bin: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let profile_dir = BUILT.get_or_init(|| {
        // The test executable lives in <target>/<profile>/deps/; binaries in <target>/<profile>/.
        let exe = std::env::current_exe().expect("the test knows its own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir
            .parent()
            .expect("<target>/<profile> has a parent");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(root())
            .args([
                "build",
                "--workspace",
                "--bins",
                "--tests",
                "--locked",
                "--quiet",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.ends_with("release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("cargo runs");
        assert!(status.success(), "cargo test --workspace --no-run failed");
        profile_dir
    });
    let path = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
