"""moto server whose IAM enforcement also checks DynamoDB and Lambda resources.

Usage: python moto_iam.py -H 127.0.0.1 -p PORT   (the arguments of moto_server)

With IAM enforcement on, moto checks every call's action against the caller's policies, and
for S3 the bucket and key as well. For the other services it checks the action against
Resource "*", so a statement naming a table ARN would never match. This launcher gives
moto's DynamoDB and Lambda handlers the resource a call touches, as AWS computes it:
    table:      arn:aws:dynamodb:REGION:ACCOUNT:table/NAME
    index:      .../table/NAME/index/INDEX  (Query and Scan with IndexName)
    batches:    every table of RequestItems, each checked
    transactions: each item as the action it stands for (Put -> dynamodb:PutItem, ...)
    invoke:     arn:aws:lambda:REGION:ACCOUNT:function:NAME
and names Lambda's Invoke call by its IAM action, lambda:InvokeFunction (moto checks
"lambda:Invoke", an action no policy grants), and reads a role's inline policy created by its CloudFormation (stored as an object, which
its IAM evaluation otherwise fails on with a KeyError), and evaluates a bucket policy's
Bool conditions on aws:SecureTransport (moto ignores Bool conditions, so the template's
DenyInsecureTransport statement would deny every request). The rehearsal talks plain HTTP on
loopback where the functions on AWS use HTTPS (the SDKs' only scheme for AWS endpoints), so
requests count as secure transport here. So the rehearsal (scripts/rehearsal/rehearse.py) keeps the template's statements as written.
Everything else is moto as released.
"""

import json
import sys
from urllib.parse import unquote

from moto.awslambda.responses import LambdaResponse
from moto.core.responses import BaseResponse
from moto.dynamodb.responses import DynamoHandler
from moto.iam.access_control import IAMPolicy, IAMRequestBase, PermissionResult
from moto.s3.models import FakeBucket
from moto.server import main


def _table_arn(handler, table, index=None):
    if table.startswith("arn:"):
        arn = table
    else:
        arn = f"arn:aws:dynamodb:{handler.region}:{handler.current_account}:table/{table}"
    return f"{arn}/index/{index}" if index else arn


def dynamodb_resources(handler):
    """The ARNs an IAM evaluation of this DynamoDB call must allow (one or more)."""
    body = handler.body if isinstance(handler.body, dict) else {}
    if "RequestItems" in body:
        return [_table_arn(handler, t) for t in body["RequestItems"]]
    if "TableName" in body:
        return [_table_arn(handler, body["TableName"], body.get("IndexName"))]
    return ["*"]


# A transaction is authorised per item, by the action each item stands for (AWS has no
# TransactWriteItems permission of its own).
TRANSACT_ACTIONS = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem",
                    "ConditionCheck": "ConditionCheckItem", "Get": "GetItem"}


def _dynamodb_authorize(self, resource="*"):
    body = self.body if isinstance(self.body, dict) else {}
    if "TransactItems" in body:
        for item in body["TransactItems"]:
            for op, spec in item.items():
                action = TRANSACT_ACTIONS.get(op, op)
                self._get_action = lambda action=action: action
                try:
                    BaseResponse._authenticate_and_authorize_normal_action(
                        self, _table_arn(self, spec["TableName"]))
                finally:
                    del self._get_action
        return
    for arn in dynamodb_resources(self):
        BaseResponse._authenticate_and_authorize_normal_action(self, arn)


def _lambda_resource(self):
    parts = self.path.split("?")[0].strip("/").split("/")
    # /2015-03-31/functions/{name}/invocations and the other /functions/{name}/... calls
    if len(parts) >= 3 and parts[1] == "functions":
        name = unquote(parts[2])
        if name.startswith("arn:"):
            return name
        return f"arn:aws:lambda:{self.region}:{self.current_account}:function:{name}"
    return "*"


# API operation -> IAM action, where they differ (Lambda only, among the calls we make).
LAMBDA_IAM_ACTIONS = {"Invoke": "InvokeFunction", "InvokeAsync": "InvokeFunction"}


def _lambda_authorize(self, resource="*"):
    operation = LambdaResponse._get_action(self)
    iam_action = LAMBDA_IAM_ACTIONS.get(operation)
    if iam_action is None:
        return BaseResponse._authenticate_and_authorize_normal_action(self, resource)
    # The instance attribute shadows the method only while the request is authorised;
    # dispatch afterwards uses the operation name again.
    self._get_action = lambda: iam_action
    try:
        return BaseResponse._authenticate_and_authorize_normal_action(self, resource)
    finally:
        del self._get_action


_iam_policy_init = IAMPolicy.__init__


def _iam_policy_from_object(self, policy):
    if isinstance(policy, dict) and "policy_document" not in policy:
        policy = json.dumps(policy)
    _iam_policy_init(self, policy)


# The request context bucket-policy conditions are evaluated against (keys lower case).
REQUEST_CONTEXT = {"aws:securetransport": "true"}


def _condition_holds(condition):
    """True or False when every operator is Bool over a known key; None otherwise."""
    for op, pairs in condition.items():
        if op != "Bool":
            return None
        for key, want in pairs.items():
            actual = REQUEST_CONTEXT.get(key.lower())
            if actual is None:
                return None
            wanted = [str(w).lower() for w in (want if isinstance(want, list) else [want])]
            if actual not in wanted:
                return False
    return True


def _bucket_permission(self, action, resource):
    if self.policy is None:
        return PermissionResult.NEUTRAL
    doc = json.loads(self.policy.decode())
    statements = doc.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    kept = []
    for st in statements:
        holds = _condition_holds(st["Condition"]) if "Condition" in st else True
        if holds is False:
            continue  # does not apply to this request
        if holds is True:
            st = {k: v for k, v in st.items() if k != "Condition"}
        kept.append(st)
    if not kept:
        return PermissionResult.NEUTRAL
    doc["Statement"] = kept
    return IAMPolicy(json.dumps(doc)).is_action_permitted(action, resource)


_check_action_permitted = IAMRequestBase.check_action_permitted


def _logged_check(self, resource):
    """Every refusal goes to moto's log as one line, so a negative-control run can show which
    call the removed statement was needed for."""
    try:
        return _check_action_permitted(self, resource)
    except Exception:
        principal = getattr(getattr(self, "_access_key", None), "arn", "?")
        print(f"REHEARSAL-DENIED {self._action} on {resource} for {principal}",
              file=sys.stderr, flush=True)
        raise


IAMRequestBase.check_action_permitted = _logged_check
IAMPolicy.__init__ = _iam_policy_from_object
FakeBucket.get_permission = _bucket_permission
DynamoHandler._authenticate_and_authorize_normal_action = _dynamodb_authorize
LambdaResponse._determine_resource = _lambda_resource
LambdaResponse._authenticate_and_authorize_normal_action = _lambda_authorize

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
