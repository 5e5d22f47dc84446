#!/usr/bin/env bash
# The one test command: installs the protocol peer (moto) into a private venv,
# starts it on loopback, runs formatting, lints and every test, stops the peer.
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
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
  cargo test --workspace --locked --doc
else
  cargo test --workspace --locked --no-fail-fast
fi
