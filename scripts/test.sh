#!/usr/bin/env bash
# The one test command: installs the protocol peer (moto) into a private venv,
# starts it on loopback, runs formatting, lints (Rust and the infra template) and every test,
# stops the peer; then checks the API against its OpenAPI document (scripts/contract.sh) and
# rehearses the deployment (scripts/rehearse.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${AFFINITY_VENV:-$HOME/.cache/affinity/venv}"
MOTO_VERSION="5.2.5"
CARGO_LAMBDA_VERSION="1.9.2"

if [ ! -x "$VENV/bin/moto_server" ]; then
  echo "==> installing moto[server]==$MOTO_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
# cargo-lambda emulates the Lambda runtime for the API's end-to-end smoke test.
if ! "$VENV/bin/pip" show cargo-lambda 2>/dev/null | grep -qx "Version: $CARGO_LAMBDA_VERSION"; then
  echo "==> installing cargo-lambda==$CARGO_LAMBDA_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "cargo-lambda==$CARGO_LAMBDA_VERSION"
fi
export AFFINITY_TEST_CARGO_LAMBDA="$VENV/bin/cargo-lambda"

# Pick a free loopback port, start moto, poll until it answers.
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"${TMPDIR:-/tmp}/affinity-moto-$PORT.log" 2>&1 &
MOTO_PID=$!
cleanup() { kill "$MOTO_PID" 2>/dev/null || true; wait "$MOTO_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$PORT/moto-api/" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$MOTO_PID" 2>/dev/null; then echo "moto failed to start"; cat "${TMPDIR:-/tmp}/affinity-moto-$PORT.log"; exit 1; fi
  sleep 0.2
done
export AFFINITY_TEST_MOTO_URL="http://127.0.0.1:$PORT"
echo "==> moto on $AFFINITY_TEST_MOTO_URL (pid $MOTO_PID)"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> infra lint (cfn-lint as written and after SAM translation, with its self-test)"
bash infra/lint.sh
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi

# The API contract: schemathesis against the demo server, from the debug CLI the tests built.
echo "==> API contract (schemathesis, scripts/contract.sh)"
cargo test --workspace --no-run --locked --quiet
bash scripts/contract.sh "${CARGO_TARGET_DIR:-target}/debug/affinity"

# The deploy rehearsal (docs/deploy.md): the template stood up in moto with IAM enforced, both
# functions run under the Lambda emulator as their own roles through a retailer's first day;
# then a rotating sample of policy statements, each removed in turn, must make a run fail.
# It is the ignored test of the end-to-end crate (tests/deploy_rehearsal.rs), run here on its own.
echo "==> deploy rehearsal (tests/deploy_rehearsal.rs: scripts/rehearse.sh, negative-control sample)"
# --workspace keeps the test run's feature set, so the test binary is the one already built.
AFFINITY_REHEARSAL_ARGS="--negative-control sample" \
  cargo test --workspace --locked --test deploy_rehearsal -- --ignored --nocapture

# The arm64 Lambda packages of the functions infra/template.yaml deploys, built with the cheap
# `lambda-ci` profile (no fat LTO): proves on every run that both functions cross-compile and
# link for provided.al2023 on arm64 (cargo-lambda + zig) and zip to a `bootstrap`. Deployed sizes
# come from the release profile and are recorded in docs/BENCHMARKS.md.
echo "==> arm64 Lambda packages (lambda-ci profile)"
mapfile -t lambda_bins < <(sed -n 's/^ *Binary: *\([A-Za-z0-9_-]*\).*/\1/p' infra/template.yaml)
workspace_bins="$(cargo metadata --format-version 1 --no-deps --locked | python3 -c \
  'import json,sys; print("\n".join(t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"] if "bin" in t["kind"]))')"
present=()
missing=()
for b in "${lambda_bins[@]}"; do
  if grep -qx "$b" <<<"$workspace_bins"; then present+=("$b"); else missing+=("$b"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  # A function the template names but the workspace does not build yet (it lands with its
  # issue): said loudly, so it is never mistaken for a packaged one.
  echo "    NOT PACKAGED (not in the workspace yet): ${missing[*]}"
fi
# Its own target directory: cargo-lambda builds with zig's compiler environment, which re-runs
# C build scripts (ring) and so invalidated the host build of the next test run (minutes).
if [ "${#present[@]}" -gt 0 ]; then
  CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/lambda-build" \
    bash scripts/package-lambdas.sh --profile lambda-ci "${present[@]}"
fi
