//! The retrain binary as a shell or Lambda starts it: its settings and how it refuses them.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn retrain() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_affinity-retrain"));
    for name in affinity_service::config::Config::variables() {
        c.env_remove(name);
    }
    c.env_remove("AFFINITY_TENANT");
    c
}

#[test]
fn help_lists_every_setting_with_its_variable() {
    let out = retrain().arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    for name in affinity_service::config::Config::variables() {
        if name.starts_with("AFFINITY_") {
            assert!(help.contains(&name), "--help does not mention {name}");
        }
    }
    assert!(help.contains("AFFINITY_TENANT"), "{help}");
}

#[test]
fn a_refused_setting_stops_it_before_any_work_naming_the_variable() {
    let out = retrain()
        .env("AFFINITY_BACKEND", "memory")
        .env("AFFINITY_REFIT_ITERATIONS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AFFINITY_REFIT_ITERATIONS"), "{err}");
    assert!(out.stdout.is_empty(), "nothing ran: {out:?}");
}
