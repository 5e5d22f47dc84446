#!/usr/bin/env bash
# Deploy rehearsal (docs/deploy.md): infra/template.yaml stood up in moto with IAM enforced,
# each function binary run under the Lambda runtime emulator with its own role and its
# template environment, through ingestion, scheduled and API-triggered retrains, the tour,
# offers, audience, dry run, reports, promote/rollback, consent, erasure and a degraded cold
# start (scripts/rehearsal/rehearse.py says how).
#
#   bash scripts/rehearse.sh                       # the rehearsal
#   bash scripts/rehearse.sh --negative-control sample   # + a rotating sample of statements,
#                                                         each removed in turn must fail a run
#   bash scripts/rehearse.sh --negative-control all      # every statement (about 20 min)
#   bash scripts/rehearse.sh --without ApiFunction:ListArtifacts   # one statement removed
#
# Installs moto (scripts/test.sh's venv) and cfn-lint/aws-sam-translator
# (infra/lint.sh's venv) when missing, builds the three binaries (debug, as the tests do),
# then runs.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${AFFINITY_VENV:-$HOME/.cache/affinity/venv}"
LINT_VENV="${AFFINITY_LINT_VENV:-$HOME/.cache/affinity/lint-venv}"
MOTO_VERSION="5.2.5"
if [ ! -x "$VENV/bin/moto_server" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
if [ ! -x "$LINT_VENV/bin/python" ] || ! "$LINT_VENV/bin/python" -c "import samtranslator" 2>/dev/null; then
  # infra/lint.sh owns the pinned versions; its first step installs them.
  bash infra/lint.sh >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
# The test run's own build step: after `cargo test --workspace` (scripts/test.sh) it compiles
# nothing, and it leaves the three binaries (api, retrain, cli) in $CARGO_TARGET_DIR/debug.
cargo test --workspace --no-run --locked --quiet
exec "$VENV/bin/python" scripts/rehearsal/rehearse.py \
  --bin-dir "$CARGO_TARGET_DIR/debug" \
  --lint-python "$LINT_VENV/bin/python" \
  "$@"
