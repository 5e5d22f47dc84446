"""Least-privilege check of a translated (plain CloudFormation) template.

Usage: python check_iam.py TRANSLATED.json

Every Allow statement of every IAM role or policy that grants a data action (DynamoDB, S3,
Lambda invoke, SQS) must name its resources through the stack's own resources (Fn::GetAtt of
a resource, or Fn::Sub whose ${...} references one, such as "${Table.Arn}/index/*"), never a
literal ARN or "*", and must not use a wildcard action ("dynamodb:*"). Exit 1 with the list of
offending statements, 0 when there are none. Managed policies attached by ARN (SAM's
AWSLambdaBasicExecutionRole, logs only) are outside this check.
"""

import json
import re
import sys

DATA_SERVICES = ("dynamodb:", "s3:", "lambda:", "sqs:")


def as_list(v):
    return v if isinstance(v, list) else [v]


def own_resource(res, resources):
    """True when `res` is an intrinsic that points at a resource of this template."""
    if not isinstance(res, dict) or len(res) != 1:
        return False
    (fn, arg), = res.items()
    if fn == "Fn::GetAtt":
        name = arg[0] if isinstance(arg, list) else str(arg).split(".")[0]
        return name in resources
    if fn == "Fn::Sub":
        text = arg[0] if isinstance(arg, list) else arg
        refs = re.findall(r"\$\{([^}]+)\}", text)
        # The string must start with a reference to one of our resources (its ARN), so a
        # Sub cannot smuggle in "arn:aws:dynamodb:*:*:table/*".
        if not refs or not text.startswith("${"):
            return False
        return refs[0].split(".")[0] in resources
    if fn == "Ref":
        return arg in resources
    return False


def check(template):
    resources = template.get("Resources", {})
    problems = []
    for rid, res in resources.items():
        rtype = res.get("Type")
        props = res.get("Properties", {})
        if rtype == "AWS::IAM::Role":
            docs = [(p.get("PolicyName", "?"), p.get("PolicyDocument", {})) for p in props.get("Policies", [])]
        elif rtype in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            docs = [(rid, props.get("PolicyDocument", {}))]
        else:
            continue
        for pname, doc in docs:
            for i, st in enumerate(as_list(doc.get("Statement", []))):
                if st.get("Effect") != "Allow":
                    continue
                actions = [a for a in as_list(st.get("Action", [])) if isinstance(a, str)]
                data = [a for a in actions if a.lower().startswith(DATA_SERVICES)]
                if not data:
                    continue
                where = f"{rid}/{pname}/statement {st.get('Sid', i)}"
                for a in data:
                    if "*" in a:
                        problems.append(f"{where}: wildcard action {a}")
                for r in as_list(st.get("Resource", [])):
                    if not own_resource(r, resources):
                        problems.append(f"{where}: resource {json.dumps(r)} is not one of this stack's resources")
    return problems


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        problems = check(json.load(f))
    for p in problems:
        print(f"{argv[1]}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
