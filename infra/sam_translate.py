"""Translate a SAM template to plain CloudFormation offline, for the second cfn-lint pass.

Usage: python sam_translate.py TEMPLATE.yaml OUT.json

cfn-lint alone does not look inside AWS::Serverless::* resources the way CloudFormation
will (runtime, architectures, policies), so infra/lint.sh lints the translated template too.
No AWS call is made: the region and account are fake, and the managed policies SAM attaches
by name are resolved from a fixed map instead of IAM.
"""

import json
import os
import sys

# samtranslator reads the region from the boto3 session; pin fakes before importing it.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "offline")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "offline")

from samtranslator.public.exceptions import InvalidDocumentException  # noqa: E402
from samtranslator.translator.transform import transform  # noqa: E402
from samtranslator.yaml_helper import yaml_parse  # noqa: E402

FAKE_ACCOUNT = "123456789012"


class OfflinePolicyLoader:
    """Stands in for samtranslator's ManagedPolicyLoader (which asks IAM)."""

    def load(self):
        names = [
            "AWSLambdaBasicExecutionRole",
            "AWSLambdaRole",
            "AWSXRayDaemonWriteAccess",
            "AWSLambdaSQSQueueExecutionRole",
        ]
        return {
            n: f"arn:aws:iam::aws:policy/service-role/{n}" for n in names
        }


def as_packaged(template):
    """Replaces local code paths with S3 URIs, as `sam package` does before a deploy."""
    for name, res in (template.get("Resources") or {}).items():
        props = res.get("Properties") or {}
        if res.get("Type") == "AWS::Serverless::Function":
            uri = props.get("CodeUri")
            if isinstance(uri, str) and not uri.startswith("s3://"):
                props["CodeUri"] = f"s3://offline-lint-artifacts/{name}.zip"
        if res.get("Type") == "AWS::Serverless::LayerVersion":
            uri = props.get("ContentUri")
            if isinstance(uri, str) and not uri.startswith("s3://"):
                props["ContentUri"] = f"s3://offline-lint-artifacts/{name}.zip"
    return template


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    src, out = argv[1], argv[2]
    with open(src, encoding="utf-8") as f:
        template = as_packaged(yaml_parse(f.read()))
    params = {"AWS::AccountId": FAKE_ACCOUNT, "AWS::Region": os.environ["AWS_DEFAULT_REGION"]}
    try:
        translated = transform(template, params, OfflinePolicyLoader())
    except InvalidDocumentException as e:
        for cause in e.causes:
            print(f"{src}: SAM translation error: {cause.message}", file=sys.stderr)
        return 1
    with open(out, "w", encoding="utf-8") as f:
        json.dump(translated, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
