# shellcheck shell=bash
# Shared helpers for the side-by-side benchmark scripts (bench/quality,
# bench/train-speed). Source it; it defines functions and variables only.
#
#   bench_venv          create/reuse the peer venv (pinned numpy/scipy/implicit)
#   bench_data_ml100k   fetch MovieLens-100k (from the recbole wheel) -> path on stdout
#   bench_build         build the Rust driver; sets AFFINITY_BENCH_BIN
#   bench_machine_info  date, CPU model, core count (for the report header)
#
# Everything lands outside the work tree by default (~/.cache/affinity/...);
# nothing here is ever committed.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"

AFFINITY_BENCH_VENV="${AFFINITY_BENCH_VENV:-$HOME/.cache/affinity/bench-venv}"
AFFINITY_BENCH_DATA="${AFFINITY_BENCH_DATA:-$HOME/.cache/affinity/bench-data}"
AFFINITY_BENCH_PYTHON="${AFFINITY_BENCH_PYTHON:-python3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/affinity/bench-target}"

# Pinned peer stack. implicit 0.7.3 ships manylinux CPU wheels for CPython 3.11
# x86_64 (checked on this machine: it installs from wheels, no compiler needed).
BENCH_PIP_PINS=(
  "numpy==2.4.6"
  "scipy==1.17.1"
  "implicit==0.7.3"
  "threadpoolctl==3.8.0"
  "tqdm==4.70.1"
)
RECBOLE_VERSION="1.2.1"

BENCH_PY="$AFFINITY_BENCH_VENV/bin/python"

bench_log() { echo "==> $*" >&2; }

bench_venv() {
  local stamp="$AFFINITY_BENCH_VENV/.affinity-pins"
  local want="${BENCH_PIP_PINS[*]}"
  if [ -x "$BENCH_PY" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  bench_log "creating peer venv at $AFFINITY_BENCH_VENV (${want})"
  "$AFFINITY_BENCH_PYTHON" -m venv "$AFFINITY_BENCH_VENV"
  "$BENCH_PY" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
  # --only-binary: the CPU build of implicit comes from the PyPI wheel; never
  # fall back to compiling it (that would need a CUDA-free cmake toolchain).
  "$BENCH_PY" -m pip install --quiet --disable-pip-version-check \
    --only-binary=:all: "${BENCH_PIP_PINS[@]}" >&2
  "$BENCH_PY" -c 'import implicit, numpy, scipy, threadpoolctl; print("implicit", implicit.__version__, "numpy", numpy.__version__, "scipy", scipy.__version__)' >&2
  echo "$want" >"$stamp"
}

# Prints the path of ml-100k.inter. The file is the one RecBole ships inside its
# wheel (TSV, header "user_id:token item_id:token rating:float timestamp:float").
bench_data_ml100k() {
  local dir="$AFFINITY_BENCH_DATA/ml-100k"
  local inter="$dir/ml-100k.inter"
  if [ -s "$inter" ]; then
    echo "$inter"
    return 0
  fi
  bench_venv
  mkdir -p "$dir"
  local tmp
  tmp="$(mktemp -d)"
  bench_log "fetching MovieLens-100k from the recbole==$RECBOLE_VERSION wheel"
  "$BENCH_PY" -m pip download --quiet --disable-pip-version-check --no-deps \
    "recbole==$RECBOLE_VERSION" -d "$tmp" >&2
  local whl
  whl="$(ls "$tmp"/recbole-"$RECBOLE_VERSION"-*.whl)"
  "$BENCH_PY" - "$whl" "$inter" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    data = z.read("recbole/dataset_example/ml-100k/ml-100k.inter")
with open(out + ".part", "wb") as f:
    f.write(data)
PY
  mv "$inter.part" "$inter"
  rm -rf "$tmp"
  local lines
  lines="$(wc -l <"$inter")"
  bench_log "ml-100k.inter: $lines lines (header + 100000 ratings expected)"
  echo "$inter"
}

# A preset AFFINITY_BENCH_BIN (a driver built elsewhere) skips the build.
bench_build() {
  if [ -z "${AFFINITY_BENCH_BIN:-}" ]; then
    bench_log "cargo build --profile release -p affinity-bench (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
    (cd "$REPO_DIR" && cargo build --profile release -p affinity-bench >&2)
    AFFINITY_BENCH_BIN="$CARGO_TARGET_DIR/release/affinity-bench"
  else
    bench_log "using prebuilt driver AFFINITY_BENCH_BIN=$AFFINITY_BENCH_BIN"
  fi
  if [ ! -x "$AFFINITY_BENCH_BIN" ]; then
    echo "affinity-bench binary not found at $AFFINITY_BENCH_BIN" >&2
    return 1
  fi
  export AFFINITY_BENCH_BIN
}

bench_machine_info() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "cores: $(nproc)"
}

# Last line of a command's stdout that looks like a JSON object.
bench_json_line() { grep -E '^\{.*\}$' | tail -1; }
