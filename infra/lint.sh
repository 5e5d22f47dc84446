#!/usr/bin/env bash
# Lints infra/template.yaml twice and proves the second pass bites.
#
#   1. cfn-lint on the template as written (SAM resources, parameters, conditions, alarms);
#   2. cfn-lint on the template translated offline by aws-sam-translator (infra/sam_translate.py,
#      fake region and account, no AWS call): cfn-lint alone does not look inside
#      AWS::Serverless::Function the way CloudFormation will (runtime, architectures, policies);
#   3. least privilege (infra/check_iam.py on the translated template): every data action
#      (DynamoDB, S3, Lambda, SQS) names this stack's own resources, no "*", no wildcard action;
#   4. self-tests: a copy with a wrong runtime on the api function must fail pass 2, and a
#      statement granting a data action on "*" must fail step 3.
#
# Tools come from PyPI into a private venv (pinned versions). Exit 0 only if every check is
# clean and both self-tests failed as they must. Usage: infra/lint.sh [TEMPLATE]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
TEMPLATE="${1:-$HERE/template.yaml}"
VENV="${AFFINITY_LINT_VENV:-$HOME/.cache/affinity/lint-venv}"
CFN_LINT_VERSION="1.58.0"
SAM_TRANSLATOR_VERSION="1.115.0"

want="cfn-lint==$CFN_LINT_VERSION aws-sam-translator==$SAM_TRANSLATOR_VERSION"
if [ "$(cat "$VENV/.affinity-pins" 2>/dev/null)" != "$want" ]; then
  echo "==> installing $want into $VENV"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $want
  echo "$want" >"$VENV/.affinity-pins"
fi
PY="$VENV/bin/python"
CFN_LINT="$VENV/bin/cfn-lint"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/affinity-lint.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Pass 2 ignores W2001 (unused parameter) only: SAM inlines parameters used inside the
# generated OpenAPI body (CorsAllowOrigins), so they look unused after translation; pass 1
# still reports parameters that are really unused.
TRANSLATED_IGNORES=(--ignore-checks W2001)

echo "==> pass 1: cfn-lint $(basename "$TEMPLATE") as written"
"$CFN_LINT" -- "$TEMPLATE"

echo "==> pass 2: aws-sam-translator (offline) then cfn-lint on the result"
"$PY" "$HERE/sam_translate.py" "$TEMPLATE" "$WORK/translated.json"
"$CFN_LINT" "${TRANSLATED_IGNORES[@]}" -- "$WORK/translated.json"

echo "==> least privilege: data actions only on this stack's tables, indexes, bucket, function, queue"
"$PY" "$HERE/check_iam.py" "$WORK/translated.json"

echo "==> self-test: a wrong runtime on the api function must fail pass 2"
"$PY" - "$TEMPLATE" "$WORK/broken.json" <<'EOF'
import json, sys
from samtranslator.yaml_helper import yaml_parse
t = yaml_parse(open(sys.argv[1], encoding="utf-8").read())
fn = t["Resources"]["ApiFunction"]
assert fn["Type"] == "AWS::Serverless::Function", fn["Type"]
fn["Properties"]["Runtime"] = "provided.al2099"
json.dump(t, open(sys.argv[2], "w", encoding="utf-8"), indent=1)
EOF
set +e
"$CFN_LINT" -- "$WORK/broken.json" >"$WORK/broken-pass1.txt" 2>&1
pass1_rc=$?
"$PY" "$HERE/sam_translate.py" "$WORK/broken.json" "$WORK/broken-translated.json" \
  >"$WORK/broken-pass2.txt" 2>&1 \
  && "$CFN_LINT" "${TRANSLATED_IGNORES[@]}" -- "$WORK/broken-translated.json" \
    >>"$WORK/broken-pass2.txt" 2>&1
pass2_rc=$?
set -e
if [ "$pass2_rc" -eq 0 ] || ! grep -q "provided.al2099" "$WORK/broken-pass2.txt"; then
  echo "FAIL: pass 2 accepted a wrong runtime on a serverless function (rc=$pass2_rc):"
  cat "$WORK/broken-pass2.txt"
  exit 1
fi
echo "    pass 2 rejects it: $(grep -m1 -o "E[0-9]* 'provided.al2099' is not one of" "$WORK/broken-pass2.txt") the known runtimes"
if [ "$pass1_rc" -eq 0 ]; then
  echo "    (pass 1 alone accepts it, which is why pass 2 exists)"
else
  echo "    (pass 1 rejects it too, rc=$pass1_rc)"
fi
echo "==> self-test: a data action on \"*\" must fail the least-privilege check"
"$PY" - "$WORK/translated.json" "$WORK/wide.json" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1], encoding="utf-8"))
doc = t["Resources"]["ApiFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]
doc["Statement"].append({"Effect": "Allow", "Action": "dynamodb:Scan", "Resource": "*"})
json.dump(t, open(sys.argv[2], "w", encoding="utf-8"))
EOF
if "$PY" "$HERE/check_iam.py" "$WORK/wide.json" 2>"$WORK/wide.txt"; then
  echo "FAIL: the least-privilege check accepted dynamodb:Scan on \"*\""
  exit 1
fi
echo "    rejected: $(head -1 "$WORK/wide.txt" | sed 's/^[^:]*: //')"
echo "==> infra lint: both passes and the least-privilege check clean, self-tests ok"
