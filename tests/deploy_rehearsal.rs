//! The deploy rehearsal (docs/deploy.md) as a test: infra/template.yaml stood up in moto with
//! IAM enforced, both functions run under a Lambda runtime API emulator as their own roles
//! through a retailer's first day (scripts/rehearse.sh does the work).
//!
//! Ignored by default: it needs Python, a free minute and no other rehearsal on the machine.
//! `scripts/test.sh` runs it with `--ignored`; `AFFINITY_REHEARSAL_ARGS` passes arguments to
//! the script (`--negative-control sample` in CI).
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

#[test]
#[ignore = "minutes long; scripts/test.sh runs it"]
fn the_deployment_survives_its_first_day_under_its_own_permissions() {
    let args = std::env::var("AFFINITY_REHEARSAL_ARGS").unwrap_or_default();
    let status = Command::new("bash")
        .current_dir(support::root())
        .arg("scripts/rehearse.sh")
        .args(args.split_whitespace())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the deploy rehearsal failed ({status}); its steps and logs are printed above"
    );
}
