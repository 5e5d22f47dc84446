//! The Lambda functions carry no CLI-only code: the demo shop generator (the service's
//! `demo` feature) and the CLI's presentation crates stay out of both deployed binaries.

#[path = "../../../model/tests/support/cargo_tree.rs"]
mod support;
use support::cargo_tree;

/// `cargo tree` lines (package and feature nodes) of `package`'s normal build, as deployed.
fn tree(package: &str) -> String {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    cargo_tree(manifest, package, "normal,features", None)
}

#[test]
fn the_deployed_functions_leave_the_cli_code_out() {
    for package in ["affinity-api", "affinity-retrain"] {
        let tree = tree(package);
        assert!(
            tree.contains("affinity-service v"),
            "{package}: the tree was read"
        );
        assert!(
            !tree.contains("affinity-service feature \"demo\""),
            "{package} builds the demo shop generator"
        );
        for cli_only in ["affinity-cli", "comfy-table", "indicatif"] {
            assert!(
                !tree
                    .lines()
                    .any(|l| l.starts_with(&format!("{cli_only} v"))),
                "{package} pulls in {cli_only}"
            );
        }
    }
}
