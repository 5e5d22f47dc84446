//! `affinity-model` is the math: it must stay free of file-system, network, cloud and
//! database crates, so it trains and scores the same in a Lambda, the CLI and a test, and
//! every byte it reads or writes goes through the service's stores. A new dependency fails
//! this test until it is added to `DIRECT` below, after a look at what it does.

use std::collections::BTreeSet;

#[path = "support/cargo_tree.rs"]
mod support;
use support::cargo_tree;

/// Every crate `affinity-model` may depend on directly (not dev-dependencies): computation,
/// encoding and checksums.
const DIRECT: &[&str] = &[
    "argmin",
    "argmin-math",
    "bytemuck",
    "chrono",
    "hex",
    "hnsw_rs",
    "ndarray",
    "rand",
    "rand_chacha",
    "rayon",
    "self_cell",
    "serde",
    "serde_json",
    "serde_path_to_error",
    "sha2",
    "statrs",
    "thiserror",
];

/// Crates that do file-system staging, networking, cloud or database work: none may appear
/// anywhere in the model's dependency tree, directly or through another crate.
const FORBIDDEN: &[&str] = &[
    "tempfile",
    "fs_extra",
    "tokio",
    "mio",
    "socket2",
    "hyper",
    "reqwest",
    "ureq",
    "h2",
    "rustls",
    "native-tls",
    "openssl",
    "aws-config",
    "aws-sdk-s3",
    "aws-sdk-dynamodb",
    "aws-smithy-runtime",
    "lambda_runtime",
    "lambda_http",
    "axum",
    "rusqlite",
];

/// Package names in `cargo tree` output for the model's normal (non-dev, non-build) edges.
fn tree(depth: Option<usize>) -> BTreeSet<String> {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    cargo_tree(manifest, "affinity-model", "normal", depth)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "affinity-model")
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_model_depends_only_on_the_reviewed_crates() {
    let direct = tree(Some(1));
    let allowed: BTreeSet<String> = DIRECT.iter().map(|s| (*s).to_owned()).collect();
    let new: Vec<_> = direct.difference(&allowed).collect();
    assert!(
        new.is_empty(),
        "affinity-model gained dependencies {new:?}: the model crate does no file-system or \
         network work (see this file's header); move that code to the service, or review the \
         crate and add it to DIRECT"
    );
    // The list stays honest: nothing in it that the model no longer uses.
    let gone: Vec<_> = allowed.difference(&direct).collect();
    assert!(
        gone.is_empty(),
        "DIRECT lists crates the model no longer uses: {gone:?}"
    );
}

#[test]
fn no_file_system_network_cloud_or_database_crate_is_reachable() {
    let all = tree(None);
    assert!(all.len() > DIRECT.len(), "the tree was read: {all:?}");
    let found: Vec<_> = FORBIDDEN.iter().filter(|f| all.contains(**f)).collect();
    assert!(
        found.is_empty(),
        "affinity-model reaches {found:?} through its dependencies"
    );
}
