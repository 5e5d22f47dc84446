//! Running the `affinity` CLI against an embedded store folder: shared by the CLI's own tests
//! (cli/tests/cli.rs includes this file) and the end-to-end tests.

use std::path::Path;
use std::process::{Command, Output};

/// Runs the CLI `exe` against the embedded store in `data/store`, with nothing from the
/// caller's environment choosing another store or tenant.
pub fn affinity_in(exe: &Path, data: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .current_dir(data)
        .env("AFFINITY_DATA_DIR", data.join("store"))
        .env_remove("AFFINITY_BACKEND")
        .env_remove("AFFINITY_TENANT")
        .output()
        .expect("the CLI starts")
}

/// The standard output of a run that must succeed.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("the CLI prints UTF-8")
}
