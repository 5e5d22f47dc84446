"""Deploy rehearsal: the SAM stack stood up in moto with IAM enforced, each function run as
Lambda runs it, under its own role, through a retailer's first day (docs/deploy.md).

Usage (scripts/rehearse.sh sets up the venvs and builds the binaries):
    python rehearse.py --bin-dir DIR [--without Function:Sid]... [--negative-control MODE]

1. infra/template.yaml is translated offline with aws-sam-translator (infra/sam_translate.py,
   as infra/lint.sh does) and created as a stack by moto's CloudFormation. Resource types that
   moto's CloudFormation lacks are detected after the stack is created (they are missing from
   its resource list) and created through the service APIs from the template's own properties.
2. IAM is then enforced (moto's INITIAL_NO_AUTH_ACTION_COUNT, set to 0 at run time). moto is
   started through moto_iam.py, which also checks DynamoDB tables and indexes and Lambda
   functions as resources, so every statement is evaluated as written.
3. Each function binary polls a Lambda runtime API (lambda_emulator.py), as `lambda_http`/
   `lambda_runtime` run on Lambda; the api gets the HTTP API's payload-2.0 events. Each runs with the credentials of its own role (sts:AssumeRole) and
   exactly the environment its function resource has in moto, dynamic references resolved.
   The only addition is AWS_ENDPOINT_URL, pointing the SDK at moto.
4. The scenario: keys (operator CLI), the catalog, purchases and offers ingested through the
   API, the scheduled retrain (the EventBridge rule's own input), the README tour, offers,
   batch, audience, dry run, reports, an API-triggered retrain (the api's real Invoke call,
   recorded on its way to moto and replayed into the retrain function), rollback and
   promote, consent, erasure, a cold start with the live artifact deleted, and the EMF
   metrics the functions printed checked against the alarms created from the template.

--without Function:Sid removes one statement (repeatable) and expects the run to fail: the
negative control. --negative-control sample|all runs the full rehearsal once and then one
run per statement (sample: a rotating subset), each of which must fail.
"""

import argparse
import datetime as dt
import http.client
import http.server
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import boto3
from botocore.config import Config

import lambda_emulator  # beside this file

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEMPLATE = REPO / "infra" / "template.yaml"
STACK = "affinity-rehearsal"
REGION = "us-east-1"
# Parameters the rehearsal overrides; every other one keeps the template's default.
PARAMETERS = {"TablePrefix": "rehearsal-", "TableDeletionProtection": "false"}
CODE_BUCKET = "offline-lint-artifacts"  # where infra/sam_translate.py points CodeUri
SDK = Config(retries={"max_attempts": 2, "mode": "standard"})


class StepFailed(Exception):
    def __init__(self, step, detail):
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, proc=None, timeout=300):
    start = time.time()
    while time.time() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise StepFailed("start", f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.2)
    raise StepFailed("start", f"{what} never opened port {port}")


def stop(proc, sig_first=None):
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig_first or 15)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------
# moto
# ---------------------------------------------------------------------------------------
class Moto:
    def __init__(self, workdir):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / "moto.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "moto_iam.py"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_port(self.port, "moto", self.proc, timeout=60)
        # Functions never run inside moto (the emulator runs them); its Lambda only has to
        # authorise and accept invocations.
        self.post("/moto-api/config", json.dumps({"lambda": {"use_docker": False}}).encode())

    def post(self, path, data):
        # Not form-encoded, or Flask consumes the body before moto reads it.
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def enforce_iam(self):
        """From now on every call is authenticated and authorised."""
        self.post("/moto-api/reset-auth", b"0")

    def client(self, service, creds):
        return boto3.client(
            service, endpoint_url=self.url, region_name=REGION, config=SDK, **creds
        )

    def close(self):
        stop(self.proc)
        self.log.close()


SETUP_CREDS = {"aws_access_key_id": "rehearsal-setup", "aws_secret_access_key": "unused"}


def boto_creds(c):
    out = {"aws_access_key_id": c["AccessKeyId"], "aws_secret_access_key": c["SecretAccessKey"]}
    if c.get("SessionToken"):
        out["aws_session_token"] = c["SessionToken"]
    return out


# ---------------------------------------------------------------------------------------
# The template
# ---------------------------------------------------------------------------------------
def translate(workdir, lint_python):
    out = workdir / "translated.json"
    subprocess.run(
        [lint_python, str(REPO / "infra" / "sam_translate.py"), str(TEMPLATE), str(out)],
        check=True,
    )
    return json.loads(out.read_text())


def function_statements(t):
    """(function, sid, policy, statement) for each statement of each function role's
    inline policies, in template order."""
    out = []
    for name, res in t["Resources"].items():
        if res["Type"] != "AWS::Lambda::Function":
            continue
        role = res["Properties"]["Role"]["Fn::GetAtt"][0]
        for pol in t["Resources"][role]["Properties"].get("Policies", []):
            for i, st in enumerate(pol["PolicyDocument"]["Statement"]):
                sid = st.get("Sid") or f"{pol['PolicyName']}.{i}"
                out.append((name, sid, pol, st))
    return out


def remove_statements(t, without):
    known = {f"{f}:{s}" for f, s, _, _ in function_statements(t)}
    unknown = set(without) - known
    if unknown:
        raise SystemExit(f"--without names no statement: {sorted(unknown)}; known: {sorted(known)}")
    for f, sid, pol, st in function_statements(t):
        if f"{f}:{sid}" in without:
            pol["PolicyDocument"]["Statement"].remove(st)
    for res in t["Resources"].values():
        if res["Type"] == "AWS::IAM::Role" and "Policies" in res["Properties"]:
            res["Properties"]["Policies"] = [
                p for p in res["Properties"]["Policies"] if p["PolicyDocument"]["Statement"]
            ]


NO_VALUE = object()


class Unresolved(Exception):
    pass


class Resolver:
    """CloudFormation intrinsics over what exists in moto, for the resources the rehearsal
    creates itself."""

    def __init__(self, template, params, physical, clients, account):
        self.t = template
        self.params = params
        self.physical = physical
        self.c = clients
        self.account = account

    def resolve(self, v):
        if isinstance(v, list):
            return [x for x in (self.resolve(i) for i in v) if x is not NO_VALUE]
        if not isinstance(v, dict):
            return v
        if len(v) == 1:
            ((k, a),) = v.items()
            if k == "Ref":
                return self.ref(a)
            if k == "Fn::GetAtt":
                name, attr = a if isinstance(a, list) else a.split(".", 1)
                return self.getatt(name, attr)
            if k == "Fn::Sub":
                return self.sub(a)
            if k == "Fn::If":
                cond, yes, no = a
                return self.resolve(yes if self.condition(cond) else no)
            if k == "Fn::Split":
                return self.resolve(a[1]).split(a[0])
            if k == "Fn::Join":
                return a[0].join(str(self.resolve(x)) for x in a[1])
        out = {}
        for k, x in v.items():
            r = self.resolve(x)
            if r is not NO_VALUE:
                out[k] = r
        return out

    def ref(self, name):
        pseudo = {
            "AWS::StackName": STACK,
            "AWS::Region": REGION,
            "AWS::AccountId": self.account,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": NO_VALUE,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.params:
            return self.params[name]
        if name in self.physical:
            return self.physical[name]
        raise Unresolved(name)

    def getatt(self, name, attr):
        if name not in self.physical:
            raise Unresolved(name)
        pid = self.physical[name]
        kind = self.t["Resources"][name]["Type"]
        if attr == "Arn":
            if kind == "AWS::DynamoDB::Table":
                return self.c("dynamodb").describe_table(TableName=pid)["Table"]["TableArn"]
            if kind == "AWS::S3::Bucket":
                return f"arn:aws:s3:::{pid}"
            if kind == "AWS::SQS::Queue":
                return self.c("sqs").get_queue_attributes(
                    QueueUrl=pid, AttributeNames=["QueueArn"]
                )["Attributes"]["QueueArn"]
            if kind == "AWS::Lambda::Function":
                return self.c("lambda").get_function_configuration(FunctionName=pid)[
                    "FunctionArn"
                ]
            if kind == "AWS::IAM::Role":
                return self.c("iam").get_role(RoleName=pid)["Role"]["Arn"]
            if kind == "AWS::Logs::LogGroup":
                return f"arn:aws:logs:{REGION}:{self.account}:log-group:{pid}:*"
        if attr == "QueueName" and kind == "AWS::SQS::Queue":
            return pid.rsplit("/", 1)[1]
        raise StepFailed("stack", f"the rehearsal cannot compute {name}.{attr} ({kind})")

    def sub(self, a):
        text, local = (a, {}) if isinstance(a, str) else (a[0], a[1])

        def one(m):
            expr = m.group(1)
            if expr.startswith("!"):
                return "${" + expr[1:] + "}"
            if expr in local:
                return str(self.resolve(local[expr]))
            if "." in expr and not expr.startswith("AWS::"):
                name, attr = expr.split(".", 1)
                return str(self.getatt(name, attr))
            return str(self.ref(expr))

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def condition(self, name):
        return self.truth(self.t.get("Conditions", {})[name])

    def truth(self, c):
        ((k, a),) = c.items()
        if k == "Fn::Equals":
            return str(self.resolve(a[0])) == str(self.resolve(a[1]))
        if k == "Fn::Not":
            return not self.truth(a[0])
        if k == "Fn::And":
            return all(self.truth(x) for x in a)
        if k == "Fn::Or":
            return any(self.truth(x) for x in a)
        if k == "Condition":
            return self.condition(a)
        raise StepFailed("stack", f"unknown condition function {k}")


def template_params(t):
    """Parameter values as CloudFormation hands them to properties: Number parameters as
    numbers, the rest as strings."""
    out = {}
    for k, spec in t.get("Parameters", {}).items():
        v = str(PARAMETERS.get(k, spec.get("Default", "")))
        if spec.get("Type") == "Number":
            num = float(v)
            out[k] = int(num) if num.is_integer() else num
        else:
            out[k] = v
    return out


def _alarm(r, logical, props, c):
    kwargs = dict(props)
    kwargs.setdefault("AlarmName", f"{STACK}-{logical}")
    for k in ("Threshold",):
        if k in kwargs:
            kwargs[k] = float(kwargs[k])
    for k in ("Period", "EvaluationPeriods", "DatapointsToAlarm"):
        if k in kwargs:
            kwargs[k] = int(kwargs[k])
    for m in kwargs.get("Metrics", []):
        if "MetricStat" in m:
            m["MetricStat"]["Period"] = int(m["MetricStat"]["Period"])
    c("cloudwatch").put_metric_alarm(**kwargs)
    return kwargs["AlarmName"]


def _secret(r, logical, props, c):
    sm = c("secretsmanager")
    gen = props.get("GenerateSecretString")
    if gen:
        allowed = {
            "PasswordLength", "ExcludeCharacters", "ExcludeNumbers", "ExcludePunctuation",
            "ExcludeUppercase", "ExcludeLowercase", "IncludeSpace", "RequireEachIncludedType",
        }
        value = sm.get_random_password(**{k: v for k, v in gen.items() if k in allowed})[
            "RandomPassword"
        ]
    else:
        value = props["SecretString"]
    out = sm.create_secret(
        Name=props.get("Name", f"{STACK}-{logical}"),
        Description=props.get("Description", ""),
        SecretString=value,
    )
    return out["ARN"]


def _bucket_policy(r, logical, props, c):
    c("s3").put_bucket_policy(Bucket=props["Bucket"], Policy=json.dumps(props["PolicyDocument"]))
    return props["Bucket"]


def _http_api(r, logical, props, c):
    # moto has no ImportApi: the OpenAPI body SAM generated is replayed as the calls it
    # stands for (the API, then one Lambda-proxy integration and route per path and method).
    gw = c("apigatewayv2")
    body = props.get("Body", {})
    info = body.get("info", {})
    api = gw.create_api(
        Name=info.get("title", STACK), ProtocolType="HTTP",
        Description=info.get("description", ""),
    )
    for path, methods in body.get("paths", {}).items():
        for method, op in methods.items():
            integ = op.get("x-amazon-apigateway-integration")
            if not integ:
                continue
            # uri: arn:aws:apigateway:REGION:lambda:path/2015-03-31/functions/ARN/invocations
            function_arn = integ["uri"].split("/functions/")[1].rsplit("/invocations", 1)[0]
            made = gw.create_integration(
                ApiId=api["ApiId"], IntegrationType="AWS_PROXY", IntegrationUri=function_arn,
                IntegrationMethod=integ.get("httpMethod", "POST"),
                PayloadFormatVersion=integ.get("payloadFormatVersion", "2.0"),
            )
            verb = "ANY" if method == "x-amazon-apigateway-any-method" else method.upper()
            gw.create_route(ApiId=api["ApiId"], RouteKey=f"{verb} {path}",
                            Target=f"integrations/{made['IntegrationId']}")
    return api["ApiId"]


def _stage(r, logical, props, c):
    kwargs = {k: v for k, v in props.items() if k != "Tags"}
    c("apigatewayv2").create_stage(**kwargs)
    return props["StageName"]


def _invoke_config(r, logical, props, c):
    c("lambda").put_function_event_invoke_config(**props)
    return f"{props['FunctionName']}:{props.get('Qualifier', '$LATEST')}"


def _subscription(r, logical, props, c):
    return c("sns").subscribe(
        TopicArn=props["TopicArn"], Protocol=props["Protocol"], Endpoint=props["Endpoint"]
    )["SubscriptionArn"]


# How the rehearsal creates a resource type that moto's CloudFormation lacks: the service
# call that type stands for, fed the template's own (resolved) properties.
CREATORS = {
    "AWS::CloudWatch::Alarm": _alarm,
    "AWS::SecretsManager::Secret": _secret,
    "AWS::S3::BucketPolicy": _bucket_policy,
    "AWS::ApiGatewayV2::Api": _http_api,
    "AWS::ApiGatewayV2::Stage": _stage,
    "AWS::Lambda::EventInvokeConfig": _invoke_config,
    "AWS::SNS::Subscription": _subscription,
}


def stand_up(moto, t, log):
    """Creates the stack; returns (physical ids by logical id, resolver, by-hand list)."""
    c = lambda s: moto.client(s, SETUP_CREDS)  # noqa: E731
    s3 = c("s3")
    s3.create_bucket(Bucket=CODE_BUCKET)
    for name, res in t["Resources"].items():
        if res["Type"] == "AWS::Lambda::Function":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as z:
                # moto stores the package but never runs it: the rehearsal runs the function
                # binary itself, under the Lambda runtime emulator.
                z.writestr("bootstrap", "#!/bin/sh\necho 'run by the rehearsal, not moto' >&2\nexit 1\n")
            s3.put_object(
                Bucket=CODE_BUCKET,
                Key=res["Properties"]["Code"]["S3Key"],
                Body=buf.getvalue(),
            )
    params = template_params(t)
    cf = c("cloudformation")
    cf.create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(t),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in PARAMETERS.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    for _ in range(120):
        st = cf.describe_stacks(StackName=STACK)["Stacks"][0]
        if not st["StackStatus"].endswith("IN_PROGRESS"):
            break
        time.sleep(0.5)
    if st["StackStatus"] != "CREATE_COMPLETE":
        raise StepFailed("stack", f"{st['StackStatus']}: {st.get('StackStatusReason')}")
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cf.list_stack_resources(StackName=STACK)["StackResourceSummaries"]
        if r.get("LogicalResourceId")
    }
    account = c("sts").get_caller_identity()["Account"]
    resolver = Resolver(t, params, physical, c, account)
    pending = {}
    for name, res in t["Resources"].items():
        if name in physical:
            continue
        if "Condition" in res and not resolver.condition(res["Condition"]):
            log(f"    {name} ({res['Type']}): condition {res['Condition']} is false, not created")
            continue
        if res["Type"] not in CREATORS:
            raise StepFailed(
                "stack",
                f"moto's CloudFormation did not create {name} ({res['Type']}) and the rehearsal "
                "has no creator for that type",
            )
        pending[name] = res
    by_hand = []
    while pending:
        progressed = False
        for name, res in list(pending.items()):
            try:
                props = resolver.resolve(res.get("Properties", {}))
            except Unresolved:
                continue
            physical[name] = CREATORS[res["Type"]](resolver, name, props, c)
            by_hand.append(f"{name} ({res['Type']})")
            del pending[name]
            progressed = True
        if not progressed:
            raise StepFailed("stack", f"cannot resolve the properties of {sorted(pending)}")
    return physical, resolver, by_hand


def function_environment(moto, physical_name, resolver):
    """The variables Lambda would give the function: its configuration in moto, with
    dynamic references ({{resolve:secretsmanager:...}}) resolved as CloudFormation does."""
    c = moto.client("lambda", SETUP_CREDS)
    conf = c.get_function_configuration(FunctionName=physical_name)
    env = {}
    sm = moto.client("secretsmanager", SETUP_CREDS)
    for k, v in conf.get("Environment", {}).get("Variables", {}).items():
        v = str(v)
        if "${" in v:
            v = resolver.sub(v)
        def dynamic(m):
            secret, field = m.group(1), m.group(2)
            value = sm.get_secret_value(SecretId=secret)["SecretString"]
            return value if field == "SecretString" else json.loads(value)[field]
        v = re.sub(r"\{\{resolve:secretsmanager:(.+?):(SecretString|[^:}]+)\}\}", dynamic, v)
        if "{{resolve:" in v or "${" in v:
            raise StepFailed("stack", f"{k} of {physical_name} stays unresolved: {v}")
        env[k] = v
    return conf, env


# ---------------------------------------------------------------------------------------
# Functions under the Lambda runtime emulator
# ---------------------------------------------------------------------------------------
class LambdaFunction:
    def __init__(self, logical, binary, conf, env, creds, endpoint_env, workdir):
        self.logical = logical
        self.name = conf["FunctionName"]
        self.binary = binary
        self.conf = conf
        self.env = env
        self.creds = creds
        self.endpoint_env = endpoint_env
        self.workdir = workdir
        self.emulator_log = open(workdir / f"{logical}.emulator.log", "w")
        self.runtime = lambda_emulator.RuntimeApi(self.name, conf["FunctionArn"],
                                                  self.emulator_log)
        self.proc = None
        self.starts = 0
        self.start()

    @property
    def log_path(self):
        return self.workdir / f"{self.logical}.log"

    def start(self):
        """A cold start: a new process, as Lambda starts a new instance."""
        stop(self.proc)
        self.starts += 1
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TZ": ":UTC",
            "LANG": "en_US.UTF-8",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EXECUTION_ENV": "AWS_Lambda_rapid",
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.conf.get("MemorySize", 128)),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"rehearsal/{self.starts}",
            "AWS_LAMBDA_RUNTIME_API": self.runtime.address,
            "LAMBDA_TASK_ROOT": str(self.binary.parent),
            "AWS_ACCESS_KEY_ID": self.creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": self.creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": self.creds["SessionToken"],
        }
        env.update(self.env)
        env.update(self.endpoint_env)
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [str(self.binary)], env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def alive(self):
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise StepFailed(self.logical, f"the function exited ({self.proc.returncode}): "
                             + " | ".join(tail))

    def request(self, method, path, key=None, body=None, headers=None, timeout=120):
        """One request as API Gateway's HTTP API delivers it: (status, JSON or text)."""
        hdrs = dict(headers or {})
        if key:
            hdrs["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        event = lambda_emulator.http_api_event(
            method, path, hdrs, data, self.conf["FunctionArn"].split(":")[4], "rehearsal", REGION)
        kind, raw = self.call(event, timeout)
        if kind == "error":
            # API Gateway answers 500 when the integration fails.
            return 500, raw.decode(errors="replace")
        status, _, data = lambda_emulator.http_api_response(raw)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, data.decode(errors="replace")

    def invoke(self, payload, timeout=900):
        """A synchronous Invoke: (200, the function's result or its error document), as
        Lambda answers 200 with X-Amz-Function-Error when the function fails."""
        _, raw = self.call(payload if isinstance(payload, bytes)
                           else json.dumps(payload).encode(), timeout)
        try:
            return 200, json.loads(raw or b"null")
        except ValueError:
            return 200, raw.decode(errors="replace")

    def call(self, payload, wait_s):
        self.alive()
        try:
            return self.runtime.invoke(payload, self.conf.get("Timeout", 3), self.alive,
                                       wait_s)
        except lambda_emulator.NoAnswer as e:
            raise StepFailed(self.logical, f"{e} (see {self.emulator_log.name})") from None

    def emf(self):
        """The CloudWatch embedded-metric-format records the function printed."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            line = line.strip()
            if not line.startswith("{") or '"_aws"' not in line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec.get("_aws"), dict):
                out.append(rec)
        return out

    def close(self):
        stop(self.proc)
        self.runtime.close()
        self.emulator_log.close()


class InvokeRecorder:
    """The api function's Lambda endpoint: forwards every call to moto unchanged (moto
    authenticates and authorises it) and keeps the payload of each accepted asynchronous
    invocation, which the rehearsal then delivers to the retrain function, as Lambda's
    async queue would."""

    def __init__(self, moto_port):
        self.accepted = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                conn = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=60)
                conn.putrequest(self.command, self.path, skip_host=True,
                                skip_accept_encoding=True)
                for k, v in self.headers.items():
                    conn.putheader(k, v)
                conn.endheaders(body)
                resp = conn.getresponse()
                raw = resp.read()
                if resp.status == 202 and self.path.endswith("/invocations"):
                    recorder.accepted.append(
                        (self.path.split("/functions/")[1].split("/")[0], body)
                    )
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection",
                                         "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                conn.close()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


# ---------------------------------------------------------------------------------------
# The shop
# ---------------------------------------------------------------------------------------
STYLES = [("Coffee", "Mugs"), ("Tea", "Mugs"), ("Running", "Snacks"), ("Books", "Stationery"),
          ("Coffee", "Snacks"), ("Tea", "Books")]
CATEGORIES = sorted({c for s in STYLES for c in s})


def shop(seed=7, customers=240):
    rng = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    items = []
    for cat in CATEGORIES:
        for n in range(8):
            items.append({"item_id": f"sku-{cat.lower()}-{n}", "category": cat,
                          "title": f"{cat} {n}", "price_minor": 500 + 150 * n,
                          "currency": "EUR"})
    by_cat = {c: [i["item_id"] for i in items if i["category"] == c] for c in CATEGORIES}
    purchases = []
    for c in range(customers):
        style = STYLES[c % len(STYLES)]
        for o in range(2 + rng.randrange(6)):
            at = now - dt.timedelta(days=rng.randrange(300), minutes=rng.randrange(1440))
            for line in range(1 + rng.randrange(3)):
                cat = rng.choice(style) if rng.random() < 0.9 else rng.choice(CATEGORIES)
                pool = by_cat[cat]
                item = pool[min(int(rng.random() ** 2 * len(pool)), len(pool) - 1)]
                purchases.append({
                    "order_id": f"ord-{c:04}-{o}", "line": line + 1,
                    "customer_id": f"cust-{c:04}", "item_id": item, "quantity": 1,
                    "unit_price_minor": 500, "currency": "EUR",
                    "purchased_at": at.isoformat().replace("+00:00", "Z"),
                })
    offers = [
        {"offer_id": "coffee-10", "document": {
            "kind": "discount", "title": "10% off coffee", "categories": ["Coffee"],
            "value": 4.0, "cost": 0.05, "eligibility": {"channels": ["email", "web"]},
            "caps": {"max_per_customer": 3, "cooldown_days": 7}}},
        {"offer_id": "tea-time", "document": {
            "kind": "discount", "title": "Tea for two", "categories": ["Tea"],
            "value": 3.0, "cost": 0.05, "caps": {"cooldown_days": 7}}},
    ]
    return items, purchases, offers


# ---------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------
class Rehearsal:
    def __init__(self, args, without, workdir, quiet=False):
        self.args = args
        self.without = set(without)
        self.workdir = workdir
        self.quiet = quiet
        self.steps = []
        self.moto = None
        self.functions = {}
        self.recorder = None
        self.expected_denials = 0

    def log(self, msg):
        if not self.quiet:
            print(msg, flush=True)

    def step(self, name, fn, *a):
        start = time.time()
        try:
            out = fn(*a)
        except StepFailed as e:
            raise StepFailed(name, e.detail) from None
        except Exception as e:  # a harness error is a failed step too, with its trace
            raise StepFailed(name, f"{type(e).__name__}: {e}\n{traceback.format_exc()}") from None
        self.steps.append((name, time.time() - start))
        self.log(f"  ok  {name} ({time.time() - start:.1f} s)")
        return out

    def expect(self, step, got, want_status, body=None):
        status, payload = got
        if status != want_status:
            raise StepFailed(step, f"HTTP {status} (want {want_status}): {payload}")
        return payload

    def run(self):
        try:
            self._run()
        finally:
            for f in self.functions.values():
                f.close()
            if self.recorder:
                self.recorder.close()
            if self.moto:
                self.moto.close()

    def _run(self):
        a = self.args
        t = translate(self.workdir, a.lint_python)
        remove_statements(t, self.without)
        self.moto = Moto(self.workdir)
        moto = self.moto
        physical, resolver, by_hand = self.step("stack: moto CloudFormation + by hand", stand_up,
                                                moto, t, self.log)
        self.log("      created by hand (moto's CloudFormation lacks the type): "
                 + ", ".join(by_hand))
        setup = lambda s: moto.client(s, SETUP_CREDS)  # noqa: E731

        # The operator: the person running the CLI with their own (admin) credentials.
        iam = setup("iam")
        iam.create_user(UserName="rehearsal-operator")
        iam.put_user_policy(
            UserName="rehearsal-operator", PolicyName="operator",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        )
        key = iam.create_access_key(UserName="rehearsal-operator")["AccessKey"]
        self.operator = boto_creds(key)
        # Each function's role credentials, as Lambda hands them to the function (moto's
        # STS cannot evaluate a service principal's trust policy once IAM is enforced, so
        # the roles are assumed before).
        functions = {}
        for name, res in t["Resources"].items():
            if res["Type"] != "AWS::Lambda::Function":
                continue
            conf, env = function_environment(moto, physical[name], resolver)
            creds = setup("sts").assume_role(
                RoleArn=conf["Role"], RoleSessionName=conf["FunctionName"][:64],
                DurationSeconds=3600,
            )["Credentials"]
            binary = Path(a.bin_dir) / res["Metadata"]["BuildProperties"]["Binary"]
            functions[name] = (conf, env, creds, binary)
        rule_inputs = [
            tg["Input"]
            for r in setup("events").list_rules()["Rules"]
            for tg in setup("events").list_targets_by_rule(Rule=r["Name"])["Targets"]
            if tg["Arn"].endswith(":function:" + physical["RetrainFunction"])
        ]
        self.schedule_input = rule_inputs[0] if rule_inputs else None
        # Read before enforcement: moto's signature check trips over this call's path.
        self.invoke_config = setup("lambda").get_function_event_invoke_config(
            FunctionName=physical["RetrainFunction"])
        moto.enforce_iam()
        self.step("IAM is enforced", self.check_enforced, functions)

        self.recorder = InvokeRecorder(moto.port)
        base = {"AWS_ENDPOINT_URL": moto.url}
        conf, env, creds, binary = functions["RetrainFunction"]
        self.functions["RetrainFunction"] = LambdaFunction(
            "RetrainFunction", binary, conf, env, creds, base, self.workdir)
        conf, env, creds, binary = functions["ApiFunction"]
        self.functions["ApiFunction"] = LambdaFunction(
            "ApiFunction", binary, conf, env, creds,
            {**base, "AWS_ENDPOINT_URL_LAMBDA": self.recorder.url}, self.workdir)
        self.api = self.functions["ApiFunction"]
        self.retrain = self.functions["RetrainFunction"]
        self.env = {**functions["ApiFunction"][1]}

        self.keys = self.step("operator: API keys (CLI)", self.create_keys)
        self.step("api: health", self.health)
        items, purchases, offers = shop()
        self.step("api: catalog ingest (POST /v1/items)", self.ingest, "/v1/items", "items", items)
        self.step("api: purchases ingest (POST /v1/purchases)", self.ingest, "/v1/purchases",
                  "purchases", purchases)
        self.step("api: offers (POST /v1/offers)", self.create_offers, offers)
        self.step("api: before the first model, 503 no_model", self.before_first_model)
        self.step("operator: customer rows as an older deployment kept them",
                  self.seed_layout_1)
        v1 = self.step("retrain: the schedule's invocation", self.scheduled_retrain)
        self.step("retrain moved them to one partition per customer", self.check_rekeyed)
        self.step("api: the README tour", self.tour, v1)
        self.step("api: offers, events, batch, report", self.offers_flow)
        self.step("api: audience and dry run", self.audience_and_dry_run)
        v2 = self.step("api + retrain: POST /v1/models:retrain, delivered", self.api_retrain, v1)
        self.step("api: model report", self.model_report, v2)
        self.step("api: rollback and promote", self.rollback_and_promote, v1, v2)
        self.step("api: consent", self.consent)
        self.step("api: erasure", self.erasure)
        self.step("api: cold starts with the live artifact, then every artifact, deleted", self.cold_start_degraded, v1, v2)
        self.step("retrain: a failing async invocation reaches the failure queue",
                  self.failure_destination)
        self.step("metrics: EMF records against the template's alarms", self.metrics)

    # --- steps --------------------------------------------------------------------------
    def check_enforced(self, functions):
        # Unknown credentials are refused, and a role cannot do what its policy does not
        # grant (the api may not scan the key table).
        try:
            self.moto.client("dynamodb", {"aws_access_key_id": "nobody",
                                          "aws_secret_access_key": "x"}).list_tables()
        except Exception as e:  # botocore ClientError
            if "InvalidClientTokenId" not in str(e) and "UnrecognizedClient" not in str(e) \
                    and "security token" not in str(e):
                raise StepFailed("IAM", f"unknown credentials: unexpected error {e}")
        else:
            raise StepFailed("IAM", "a call with unknown credentials succeeded")
        conf, env, creds, _ = functions["ApiFunction"]
        ddb = self.moto.client("dynamodb", boto_creds(creds))
        try:
            ddb.scan(TableName=env["AFFINITY_TABLE_PREFIX"] + "api-keys", Limit=1)
        except Exception as e:
            if "AccessDenied" not in str(e):
                raise StepFailed("IAM", f"api role scanning api-keys: unexpected error {e}")
        else:
            raise StepFailed("IAM", "the api role scanned the api-keys table")
        # Refusals from here on are the run's own.
        self.expected_denials = len(access_denied_in(self.workdir))

    def cli(self, *argv):
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.moto.url,
            "AWS_ACCESS_KEY_ID": self.operator["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": self.operator["aws_secret_access_key"],
            # The operator's CLI talks to the stack's tables and bucket (its outputs).
            "AFFINITY_BACKEND": "aws",
            "AFFINITY_TABLE_PREFIX": self.env["AFFINITY_TABLE_PREFIX"],
            "AFFINITY_BUCKET": self.env["AFFINITY_BUCKET"],
            "AFFINITY_LOG_HASH_KEY": self.env["AFFINITY_LOG_HASH_KEY"],
        }
        out = subprocess.run([str(Path(self.args.bin_dir) / "affinity"), "--json", *argv],
                             env=env, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise StepFailed("cli", f"affinity {' '.join(argv)}: {out.stderr.strip()[-2000:]}")
        return json.loads(out.stdout)

    def create_keys(self):
        keys = {}
        for name, scopes in [
            ("shop", "recommend,profiles-read"),
            ("ingest", "ingest"),
            ("crm", "offers-decide,offers-manage,profiles-read"),
            ("admin", "models-admin,customers-manage"),
        ]:
            keys[name] = self.cli("keys", "create", "--scopes", scopes, "--label",
                                  f"rehearsal-{name}")["secret"]
        return keys

    def health(self):
        # The first request waits for the function to start polling its runtime API.
        start = time.time()
        while True:
            status, body = self.api.request("GET", "/v1/health", timeout=30)
            if status == 200 or time.time() - start > 120:
                break
            time.sleep(0.5)
        self.expect("health", (status, body), 200)

    def ingest(self, path, field, rows):
        for i in range(0, len(rows), 400):
            body = self.expect(path, self.api.request(
                "POST", path, self.keys["ingest"], {field: rows[i:i + 400]}), 200)
            bad = [r for r in body.get("results", [])
                   if r.get("result") not in ("inserted", "duplicate", "written")]
            if bad:
                raise StepFailed(path, f"rows refused: {bad[:3]}")

    def create_offers(self, offers):
        for o in offers:
            self.expect("offer", self.api.request("POST", "/v1/offers", self.keys["crm"], o), 201)

    def before_first_model(self):
        # Nothing trained yet: the documented 503 no_model, not a crash.
        status, body = self.api.request("GET", "/v1/customers/cust-0001/recommendations?k=3",
                                        self.keys["shop"])
        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
        if (status, code) != (503, "no_model"):
            raise StepFailed("no model", f"HTTP {status}: {body}")

    # Layout 1 of the customers table kept every customer of a tenant under pk = tenant; the
    # retrain moves such rows to pk = <tenant>#<customer> (docs/data-model.md).
    LEGACY = {"cust-0007": True, "cust-0008": False}

    def seed_layout_1(self):
        ddb = self.moto.client("dynamodb", self.operator)
        table = self.env["AFFINITY_TABLE_PREFIX"] + "customers"
        for customer, opted_out in self.LEGACY.items():
            ddb.put_item(TableName=table, Item={
                "pk": {"S": "default"}, "sk": {"S": customer},
                "opt_out": {"BOOL": opted_out}, "updated_at": {"N": "1764547200000"}})

    def check_rekeyed(self):
        ddb = self.moto.client("dynamodb", self.operator)
        table = self.env["AFFINITY_TABLE_PREFIX"] + "customers"
        for customer in self.LEGACY:
            old = ddb.get_item(TableName=table, Key={
                "pk": {"S": "default"}, "sk": {"S": customer}}).get("Item")
            new = ddb.get_item(TableName=table, Key={
                "pk": {"S": f"default#{customer}"}, "sk": {"S": customer}}).get("Item")
            if old or not new:
                raise StepFailed("rekey", f"{customer}: old row {old}, new row {new}")
        rec = self.expect("opted out", self.api.request(
            "GET", "/v1/customers/cust-0007/recommendations?k=3", self.keys["shop"]), 200)
        if rec.get("fallback") != "opted_out":
            raise StepFailed("rekey", f"the moved opt-out is not honoured: {rec}")

    def scheduled_retrain(self):
        if self.schedule_input is None:
            raise StepFailed("schedule", "no EventBridge rule targets the retrain function")
        status, out = self.retrain.invoke(self.schedule_input.encode())
        if status != 200 or not isinstance(out, dict) or "errorType" in out:
            raise StepFailed("schedule", f"HTTP {status}: {out}")
        version = out.get("version")
        if not version or out.get("live") != version:
            raise StepFailed("schedule", f"not promoted: {out}")
        return version

    def live(self):
        return self.expect("live", self.api.request("GET", "/v1/models/live",
                                                    self.keys["admin"]), 200)

    def wait_live(self, version):
        # The api re-reads the live pointer every AFFINITY_MODEL_CHECK_SECS (default 30):
        # a warm instance picks a new version up within that.
        start = time.time()
        while time.time() - start < 90:
            status, body = self.api.request("GET", "/v1/customers/cust-0001/recommendations?k=3",
                                            self.keys["shop"])
            if status == 200 and body.get("model_version") == version:
                return body
            time.sleep(1)
        raise StepFailed("live", f"the api never served {version}: last {status} {body}")

    def tour(self, version):
        self.wait_live(version)
        k = self.keys["shop"]
        sim = self.expect("similar", self.api.request(
            "GET", "/v1/items/sku-coffee-0/similar?k=5", k), 200)
        if not sim.get("items"):
            raise StepFailed("similar", f"no items: {sim}")
        self.expect("basket", self.api.request(
            "POST", "/v1/baskets/similar", k, {"items": ["sku-coffee-0", "sku-mugs-0"], "k": 5}),
            200)
        rec = self.expect("recommendations", self.api.request(
            "GET", "/v1/customers/cust-0000/recommendations?k=5", k), 200)
        if rec.get("personalized") is not True:
            raise StepFailed("recommendations", f"not personalised: {rec}")
        new = self.expect("new shopper", self.api.request(
            "GET", "/v1/customers/new-shopper/recommendations?k=5", k), 200)
        if not new.get("items"):
            raise StepFailed("new shopper", f"no fallback items: {new}")
        self.expect("profile", self.api.request("GET", "/v1/customers/cust-0005/profile", k), 200)
        self.expect("purchase", self.api.request("POST", "/v1/purchases", self.keys["ingest"], {
            "purchases": [{"order_id": "web-1", "customer_id": "new-shopper",
                           "item_id": "sku-coffee-0", "purchased_at": "2026-11-20T10:00:00Z"}]}), 200)
        after = self.expect("fold-in", self.api.request(
            "GET", "/v1/customers/new-shopper/recommendations?k=5", k), 200)
        if after.get("personalized") is not True:
            raise StepFailed("fold-in", f"a first purchase did not personalise: {after}")
        self.expect("models/live", self.api.request("GET", "/v1/models/live", k), 200)

    def offers_flow(self):
        k = self.keys["crm"]
        self.expect("offers list", self.api.request("GET", "/v1/offers", k), 200)
        dec = self.expect("decide", self.api.request(
            "GET", "/v1/customers/cust-0000/offers?channel=email&limit=3", k), 200)
        offered = dec.get("offers") or []
        if offered:
            ev = {"event_id": "ev-1", "customer_id": "cust-0000",
                  "offer_id": offered[0]["offer_id"], "kind": "shown", "channel": "email"}
            self.expect("events", self.api.request("POST", "/v1/offers/events", k,
                                                   {"events": [ev]}), 200)
        self.expect("batch", self.api.request("POST", "/v1/offers/batch", k, {
            "customer_ids": ["cust-0000", "cust-0001", "cust-0002"], "channel": "email"}), 200)
        self.expect("pause", self.api.request("PUT", "/v1/offers/tea-time", k,
                                              {"status": "paused"}), 200)
        self.expect("offer report", self.api.request(
            "GET", "/v1/offers/coffee-10/report", k), 200)

    def audience_and_dry_run(self):
        aud = self.expect("audience", self.api.request(
            "GET", "/v1/items/sku-coffee-0/audience?limit=10", self.keys["crm"]), 200)
        if not aud.get("customers"):
            raise StepFailed("audience", f"empty audience: {aud}")
        self.expect("dry run", self.api.request(
            "POST", "/v1/offers/dry-run", self.keys["crm"],
            {"offer_id": "coffee-10", "channel": "email"}), 200)

    def api_retrain(self, v1):
        before = len(self.recorder.accepted)
        acc = self.expect("retrain", self.api.request(
            "POST", "/v1/models:retrain", self.keys["admin"], {"force": True}), 202)
        if acc.get("mode") != "lambda":
            raise StepFailed("retrain", f"not handed to the function: {acc}")
        delivered = self.recorder.accepted[before:]
        if len(delivered) != 1:
            raise StepFailed("retrain", f"{len(delivered)} invocations reached Lambda")
        function, payload = delivered[0]
        if function not in (self.retrain.name, self.retrain.conf["FunctionArn"]):
            raise StepFailed("retrain", f"invoked {function}, not {self.retrain.name}")
        status, out = self.retrain.invoke(payload)
        if status != 200 or not isinstance(out, dict) or out.get("live") != out.get("version"):
            raise StepFailed("retrain", f"HTTP {status}: {out}")
        job = self.expect("job", self.api.request(
            "GET", f"/v1/jobs/{acc['job_id']}", self.keys["admin"]), 200)
        if job.get("status") != "succeeded":
            raise StepFailed("job", f"{job}")
        v2 = out["version"]
        if v2 == v1:
            raise StepFailed("retrain", f"the same version again: {out}")
        self.wait_live(v2)
        return v2

    def model_report(self, version):
        status, body = self.api.request("GET", f"/v1/models/{version}/report",
                                        self.keys["admin"])
        if status != 200:
            raise StepFailed("report", f"HTTP {status}: {body}")

    def rollback_and_promote(self, v1, v2):
        k = self.keys["admin"]
        back = self.expect("rollback", self.api.request("POST", "/v1/models:rollback", k, {}), 200)
        if back.get("live") != v1:
            raise StepFailed("rollback", f"live is not {v1}: {back}")
        self.wait_live(v1)
        fwd = self.expect("promote", self.api.request(
            "POST", f"/v1/models/{v2}/promote", k, {"force": True}), 200)
        if fwd.get("live") != v2:
            raise StepFailed("promote", f"live is not {v2}: {fwd}")
        self.wait_live(v2)
        listed = self.expect("models", self.api.request("GET", "/v1/models", k), 200)
        if listed.get("live") != v2:
            raise StepFailed("models", f"{listed}")

    def consent(self):
        self.expect("consent", self.api.request(
            "PUT", "/v1/customers/cust-0003/consent", self.keys["admin"],
            {"personalization": False, "marketing": False}), 200)
        start = time.time()
        while True:
            rec = self.expect("opted out", self.api.request(
                "GET", "/v1/customers/cust-0003/recommendations?k=3", self.keys["shop"]), 200)
            if rec.get("fallback") == "opted_out" or time.time() - start > 60:
                break
            time.sleep(1)
        if rec.get("fallback") != "opted_out":
            raise StepFailed("consent", f"still personalised: {rec}")

    def erasure(self):
        out = self.expect("erase", self.api.request(
            "DELETE", "/v1/customers/cust-0004", self.keys["admin"]), 200)
        if not out.get("purchases") or not out.get("insight_snapshots"):
            raise StepFailed("erase", f"nothing erased: {out}")
        again = self.expect("erase again", self.api.request(
            "DELETE", "/v1/customers/cust-0004", self.keys["admin"]), 200)
        if again.get("purchases") != 0:
            raise StepFailed("erase", f"purchases left: {again}")
        status, body = self.api.request("GET", "/v1/customers/cust-0004/profile",
                                        self.keys["shop"])
        if status != 200 or body.get("known") is not False or body.get("total_spend"):
            raise StepFailed("erase", f"the profile still knows the customer: {status} {body}")

    def cold_start_degraded(self, v1, v2):
        # The operator deletes the live artifact (a versioned bucket keeps it restorable);
        # a new instance must serve the previous verified version, flagged, never a 5xx.
        s3 = self.moto.client("s3", self.operator)
        bucket = self.env["AFFINITY_BUCKET"]
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        models = self.expect("model", self.api.request("GET", f"/v1/models/{v2}",
                                                       self.keys["admin"]), 200)
        artifact = [k for k in keys if models.get("artifact_key") and
                    k.endswith(models["artifact_key"])] or \
                   [k for k in keys if v2 in k and not k.endswith(".json") and "crm/" not in k]
        if not artifact:
            raise StepFailed("cold start", f"no artifact of {v2} among {keys}")
        for k in artifact:
            s3.delete_object(Bucket=bucket, Key=k)
        self.api.start()
        self.health()
        rec = self.expect("degraded", self.api.request(
            "GET", "/v1/customers/cust-0000/recommendations?k=3", self.keys["shop"]), 200)
        if not rec.get("degraded") or rec.get("model_version") == v2:
            raise StepFailed("cold start", f"not served from an earlier version, flagged: {rec}")
        self.log(f"      served {rec['model_version']}, degraded: {rec['degraded']}")
        # Every artifact gone: the popularity list kept beside the live version answers.
        for v in (v1, v2):
            info = self.expect("model", self.api.request("GET", f"/v1/models/{v}",
                                                         self.keys["admin"]), 200)
            for k in [k for k in keys if k.endswith(info["artifact_key"])]:
                s3.delete_object(Bucket=bucket, Key=k)
        self.api.start()
        self.health()
        rec = self.expect("popularity", self.api.request(
            "GET", "/v1/customers/cust-0000/recommendations?k=3", self.keys["shop"]), 200)
        if rec.get("fallback") != "model_unavailable" or not rec.get("items"):
            raise StepFailed("cold start", f"no popularity answer: {rec}")
        self.log(f"      no artifact at all: {len(rec['items'])} popular items, "
                 f"degraded: {rec['degraded'][:80]}...")

    def failure_destination(self):
        # Lambda runs an async invocation 1 + MaximumRetryAttempts times; when every attempt
        # fails it sends an invocation record to the OnFailure destination, with the
        # function's execution role. The rehearsal does what Lambda does, as that role.
        conf = self.invoke_config
        destination = conf["DestinationConfig"]["OnFailure"]["Destination"]
        payload = {"tenant": "rehearsal-empty", "force": False, "trigger": "rehearsal"}
        attempts = []
        for _ in range(1 + conf["MaximumRetryAttempts"]):
            status, out = self.retrain.invoke(json.dumps(payload).encode())
            attempts.append((status, out))
        if any(st == 200 and isinstance(o, dict) and "errorType" not in o for st, o in attempts):
            raise StepFailed("destination", f"a retrain of an empty tenant succeeded: {attempts}")
        record = {
            "version": "1.0",
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(),
            "requestContext": {
                "requestId": "rehearsal", "functionArn": self.retrain.conf["FunctionArn"] + ":$LATEST",
                "condition": "RetriesExhausted", "approximateInvokeCount": len(attempts),
            },
            "requestPayload": payload,
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST",
                                "functionError": "Unhandled"},
            "responsePayload": attempts[-1][1],
        }
        queue_name = destination.rsplit(":", 1)[1]
        # Lambda knows the queue by ARN; the URL lookup is the harness's, not the role's.
        url = self.moto.client("sqs", self.operator).get_queue_url(QueueName=queue_name)["QueueUrl"]
        as_role = self.moto.client("sqs", boto_creds(self.retrain.creds))
        try:
            as_role.send_message(QueueUrl=url, MessageBody=json.dumps(record))
        except Exception as e:
            raise StepFailed("destination", f"the retrain role cannot deliver to {destination}: {e}")
        got = self.moto.client("sqs", self.operator).receive_message(QueueUrl=url, WaitTimeSeconds=1)
        bodies = [json.loads(m["Body"]) for m in got.get("Messages", [])]
        if not any(b.get("requestPayload") == payload for b in bodies):
            raise StepFailed("destination", f"the failure queue holds {bodies}")

    def metrics(self):
        cw = self.moto.client("cloudwatch", self.operator)
        emitted = {}
        for f in self.functions.values():
            for rec in f.emf():
                for d in rec["_aws"].get("CloudWatchMetrics", []):
                    for dims in d.get("Dimensions", [[]]):
                        for m in d.get("Metrics", []):
                            key = (d["Namespace"], m["Name"],
                                   tuple(sorted((n, str(rec.get(n))) for n in dims)))
                            emitted.setdefault(key, []).append(rec.get(m["Name"]))
        if not emitted:
            raise StepFailed("metrics", "the functions printed no EMF record")
        # What CloudWatch Logs does with EMF lines: metric data points. Then every alarm on
        # a namespace the code owns must find its metric, with the same dimensions.
        for (ns, name, dims), values in emitted.items():
            cw.put_metric_data(Namespace=ns, MetricData=[{
                "MetricName": name, "Dimensions": [{"Name": n, "Value": v} for n, v in dims],
                "Values": [float(x) for x in values if isinstance(x, (int, float))][:150],
            }])
        owned = {ns for ns, _, _ in emitted}
        checked = 0
        for alarm in cw.describe_alarms()["MetricAlarms"]:
            stats = [m["MetricStat"]["Metric"] for m in alarm.get("Metrics", []) if "MetricStat" in m]
            if "Namespace" in alarm:
                stats.append({"Namespace": alarm["Namespace"], "MetricName": alarm["MetricName"],
                              "Dimensions": alarm.get("Dimensions", [])})
            for m in stats:
                if m["Namespace"] not in owned:
                    continue
                dims = tuple(sorted((d["Name"], d["Value"]) for d in m.get("Dimensions", [])))
                if (m["Namespace"], m["MetricName"], dims) not in emitted:
                    raise StepFailed("metrics", f"alarm {alarm['AlarmName']} watches "
                                     f"{m['Namespace']}/{m['MetricName']} {dims}, never emitted; "
                                     f"emitted: {sorted(emitted)}")
                got = cw.get_metric_statistics(
                    Namespace=m["Namespace"], MetricName=m["MetricName"],
                    Dimensions=m.get("Dimensions", []),
                    StartTime=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1),
                    EndTime=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5),
                    Period=3600, Statistics=["Maximum"])
                if not got["Datapoints"]:
                    raise StepFailed("metrics", f"no datapoints for alarm {alarm['AlarmName']}")
                checked += 1
                self.log(f"      alarm {alarm['AlarmName']}: {m['Namespace']}/{m['MetricName']}"
                         f" {dict(dims)} has {len(got['Datapoints'])} datapoint(s)")
        if checked == 0:
            raise StepFailed("metrics", f"no alarm watches the code's namespaces {sorted(owned)}")
        self.log(f"      {len(emitted)} metric series emitted; {checked} alarm metric(s) fed")


def run_once(args, without, quiet=False):
    workdir = Path(tempfile.mkdtemp(prefix="affinity-rehearsal-"))
    r = Rehearsal(args, without, workdir, quiet=quiet)
    try:
        r.run()
        return True, None, workdir, r
    except StepFailed as e:
        return False, e, workdir, r


def access_denied_in(workdir):
    """The calls moto refused (moto_iam.py logs each refusal), first first."""
    log = workdir / "moto.log"
    if not log.exists():
        return []
    return [line.split("REHEARSAL-DENIED ", 1)[1].strip()
            for line in log.read_text(errors="replace").splitlines()
            if "REHEARSAL-DENIED " in line]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin-dir", required=True, help="where affinity-api, affinity-retrain and affinity are")
    p.add_argument("--lint-python", default=os.environ.get(
        "AFFINITY_LINT_PYTHON", str(Path.home() / ".cache/affinity/lint-venv/bin/python")))
    p.add_argument("--without", action="append", default=[], metavar="FUNCTION:SID")
    p.add_argument("--negative-control", choices=["none", "sample", "all"], default="none")
    p.add_argument("--sample", type=int, default=2, help="statements per sample run")
    p.add_argument("--keep", action="store_true", help="keep the work directories")
    args = p.parse_args()

    print(f"==> rehearsal{' without ' + ', '.join(args.without) if args.without else ''}")
    ok, err, workdir, r = run_once(args, args.without)
    if not ok:
        print(f"FAILED at {err.step}: {err.detail}")
        for hit in access_denied_in(workdir)[r.expected_denials:][:5]:
            print(f"    moto refused {hit}")
        print(f"    logs: {workdir}")
        return 0 if args.without else 1
    if args.without:
        print("FAIL: the rehearsal passed without " + ", ".join(args.without))
        return 1
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"==> rehearsal passed: {len(r.steps)} steps in {sum(s for _, s in r.steps):.0f} s")
    if args.negative_control == "none":
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="affinity-rehearsal-t-"))
    statements = [f"{f}:{s}" for f, s, _, _ in function_statements(translate(tmp, args.lint_python))]
    shutil.rmtree(tmp, ignore_errors=True)
    if args.negative_control == "sample":
        # A rotating sample: a different pair of statements each day, all of them over time.
        day = dt.date.today().toordinal()
        n = max(1, min(args.sample, len(statements)))
        start = (day * n) % len(statements)
        chosen = [statements[(start + i) % len(statements)] for i in range(n)]
    else:
        chosen = statements
    print(f"==> negative control: {len(chosen)} of {len(statements)} statements, one run each")
    survivors = []
    unexplained = []
    for sid in chosen:
        ok, err, workdir, run = run_once(args, [sid], quiet=True)
        denied = access_denied_in(workdir)[run.expected_denials:]
        if ok:
            survivors.append(sid)
            print(f"  FAIL  without {sid}: the rehearsal still passes")
        elif not denied:
            # A failure without a refusal is not evidence that the statement is needed.
            unexplained.append(sid)
            print(f"  FAIL  without {sid}: fails at \"{err.step}\" but moto refused nothing: "
                  f"{err.detail[:300]}")
        else:
            print(f"  ok    without {sid}: fails at \"{err.step}\"; moto refused {denied[0]}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if survivors or unexplained:
        if survivors:
            print(f"FAIL: nothing in the rehearsal needs {survivors}")
        if unexplained:
            print(f"FAIL: runs without {unexplained} failed for another reason than a refusal")
        return 1
    print("==> negative control passed: every statement tried is needed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
