//! `cargo tree` as the dependency tests read it: one package's normal (deployed) edges,
//! one node per line without the tree drawing. Shared by `model/tests/dependencies.rs` and
//! `functions/api/tests/lean.rs`.

use std::process::Command;

/// The tree of `package` in the workspace of `manifest`: `edges` as `cargo tree -e` takes
/// them, nodes formatted with `{p}`, at most `depth` levels deep when given.
pub fn cargo_tree(manifest: &str, package: &str, edges: &str, depth: Option<usize>) -> String {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["tree", "--offline", "--manifest-path", manifest])
        .args(["-p", package, "-e", edges, "--prefix", "none", "-f", "{p}"]);
    if let Some(depth) = depth {
        cmd.args(["--depth", &depth.to_string()]);
    }
    let out = cmd.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
