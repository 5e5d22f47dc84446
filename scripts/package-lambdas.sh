#!/usr/bin/env bash
# Builds Lambda packages (zip with a `bootstrap` inside) for arm64 / provided.al2023 and prints
# their sizes: what `sam build` does with BuildMethod rust-cargolambda, without SAM.
#
#   scripts/package-lambdas.sh [--profile NAME] [--out DIR] [BIN...]
#
# BIN defaults to the two functions of infra/template.yaml (affinity-api, affinity-retrain).
# --profile defaults to `release` (fat LTO, codegen-units 1, strip: the deployed build, the one
# whose sizes docs/BENCHMARKS.md reports). Any other Cargo profile is passed through as is.
# --out defaults to <cargo target dir>/lambda/<profile>; each binary gets OUT/<bin>/bootstrap.zip.
#
# Tools: cargo-lambda from PyPI (it brings zig, the cross linker) in a private venv, and the
# aarch64-unknown-linux-gnu Rust target (added with rustup if missing). The last line of output
# per binary is JSON: {"bin", "profile", "target", "zip_bytes", "binary_bytes", "build_seconds"}.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${AFFINITY_CARGO_LAMBDA_VENV:-$HOME/.cache/affinity/cargo-lambda-venv}"
CARGO_LAMBDA_VERSION="1.9.2"
TARGET="aarch64-unknown-linux-gnu"

profile="release"
out=""
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?--profile needs a name}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) bins+=("$1"); shift ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || bins=(affinity-api affinity-retrain)

want="cargo-lambda==$CARGO_LAMBDA_VERSION"
if [ "$(cat "$VENV/.affinity-pins" 2>/dev/null)" != "$want" ]; then
  echo "==> installing $want (with zig) into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "$want"
  echo "$want" >"$VENV/.affinity-pins"
fi
# cargo finds `cargo-lambda` on PATH; cargo-zigbuild finds zig through the venv's python.
export PATH="$VENV/bin:$PATH"

if ! rustup target list --installed | grep -qx "$TARGET"; then
  echo "==> rustup target add $TARGET"
  rustup target add "$TARGET"
fi

# Every requested binary must be a bin target of the workspace: say which one is missing
# instead of letting cargo-lambda fail later with a less direct message.
known="$(cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); print("\n".join(t["name"] for p in m["packages"] for t in p["targets"] if "bin" in t["kind"]))')"
for b in "${bins[@]}"; do
  if ! grep -qx "$b" <<<"$known"; then
    echo "error: no binary target named '$b' in the workspace (have: $(echo $known))" >&2
    exit 1
  fi
done

target_dir="$(cargo metadata --format-version 1 --no-deps --locked | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
out="${out:-$target_dir/lambda/$profile}"

profile_args=(--profile "$profile")
[ "$profile" = "release" ] && profile_args=(--release)
bin_args=()
for b in "${bins[@]}"; do bin_args+=(--bin "$b"); done

echo "==> cargo lambda build ${profile_args[*]} --arm64 --output-format zip ${bin_args[*]}"
start=$(date +%s)
cargo lambda build "${profile_args[@]}" --arm64 --output-format zip --locked \
  --lambda-dir "$out" "${bin_args[@]}"
seconds=$(( $(date +%s) - start ))

echo "==> packages ($profile profile, $TARGET, built in ${seconds}s)"
for b in "${bins[@]}"; do
  zip="$out/$b/bootstrap.zip"
  [ -f "$zip" ] || { echo "error: $zip was not produced" >&2; exit 1; }
  python3 - "$zip" "$b" "$profile" "$TARGET" "$seconds" <<'EOF'
import json, os, sys, zipfile
path, name, profile, target, seconds = sys.argv[1:]
with zipfile.ZipFile(path) as z:
    info = z.getinfo("bootstrap")
    head = z.open(info).read(20)
# ELF header: e_machine at offset 18, 0xB7 = AArch64.
if head[:4] != b"\x7fELF" or int.from_bytes(head[18:20], "little") != 0xB7:
    sys.exit(f"error: {path} does not hold an aarch64 ELF bootstrap")
zip_bytes = os.path.getsize(path)
print(f"    {name}: {zip_bytes / 1e6:.2f} MB zipped, {info.file_size / 1e6:.2f} MB unzipped ({path})")
print(json.dumps({"bin": name, "profile": profile, "target": target, "zip_bytes": zip_bytes,
                  "binary_bytes": info.file_size, "build_seconds": int(seconds)}))
EOF
done
