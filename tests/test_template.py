"""The SAM template: cfn-lint, the security properties it must keep, and that the local stack can load it.

Static checks read the template with `squash.local.template.read_template`, which expands short-form
intrinsics (``!Sub x`` -> ``{"Fn::Sub": x}``), so they see exactly what CloudFormation would.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from squash.config import RuntimeConfig
from squash.local.template import load_functions, read_template

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "template.yaml"
_spec = importlib.util.spec_from_file_location("generate_template", REPO / "infra" / "generate_template.py")
assert _spec is not None and _spec.loader is not None
generate_template = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate_template)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return read_template(TEMPLATE)


def _resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# X-Ray accepts no resource but "*"; the template grants it only under the Traced condition.
_XRAY = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def _conditional(statement: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A statement, or both branches of an ``!If`` (``AWS::NoValue`` grants nothing)."""
    if "Fn::If" not in statement:
        yield statement
        return
    _, *branches = statement["Fn::If"]
    yield from (branch for branch in branches if branch != {"Ref": "AWS::NoValue"})


def _statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement granted to the stack's functions: role inline policies and SAM ``Policies``."""
    for name, role in _resources(template, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                for granted in _conditional(statement):
                    yield name, granted
    for name, function in _resources(template, "AWS::Serverless::Function").items():
        for policy in _listed(function["Properties"].get("Policies", [])):
            if isinstance(policy, dict):
                for statement in policy.get("Statement", []):
                    yield name, statement


def test_cfn_lint_passes() -> None:
    api = pytest.importorskip("cfnlint.api", reason="cfn-lint is not installed (pip install -e '.[dev]')")
    matches = api.lint_file(TEMPLATE)
    assert not matches, "\n".join(str(match) for match in matches)


def test_committed_template_is_the_generated_one() -> None:
    expected = generate_template.render(generate_template.DEFAULT_PROCESSORS)
    assert TEMPLATE.read_text(encoding="utf-8") == expected, (
        "template.yaml differs from `python infra/generate_template.py`: edit the script, then regenerate"
    )


def test_generator_repeats_processor_slots(tmp_path: Path) -> None:
    out = tmp_path / "template.yaml"
    assert generate_template.main(["--processors", "3", "--out", str(out)]) == 0
    data = read_template(out)
    functions = _resources(data, "AWS::Serverless::Function")
    assert sorted(functions) == ["Allocator", "Coordinator", "Processor0", "Processor1", "Processor2"]
    listed = data["Globals"]["Function"]["Environment"]["Variables"]["SQUASH_PROCESSOR_FUNCTIONS"]["Fn::Sub"]
    assert listed == ",".join(f"${{AWS::StackName}}-processor-{i}" for i in range(3))
    with pytest.raises(ValueError, match="processors"):
        generate_template.render(0)


def test_every_function_has_reserved_concurrency_from_a_parameter(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    for name, function in _resources(template, "AWS::Serverless::Function").items():
        parameter = f"{name.rstrip('0123456789')}Concurrency"
        assert function["Properties"]["ReservedConcurrentExecutions"] == {"Ref": parameter}, name
        assert parameters[parameter]["Type"] == "Number" and parameters[parameter]["MinValue"] >= 1
    # The coordinator shapes its trees to the limits, so they reach the functions.
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables["SQUASH_ALLOCATOR_CONCURRENCY"] == {"Ref": "AllocatorConcurrency"}
    assert variables["SQUASH_PROCESSOR_CONCURRENCY"] == {"Ref": "ProcessorConcurrency"}
    # The defaults leave Lambda's 100 unreserved executions in an account at the default quota of 1,000.
    defaults = {name: parameters[f"{name}Concurrency"]["Default"] for name in ("Coordinator", "Allocator", "Processor")}
    slots = generate_template.DEFAULT_PROCESSORS
    assert defaults["Coordinator"] + defaults["Allocator"] + slots * defaults["Processor"] <= 900


def test_bucket_is_encrypted_private_and_tls_only(template: dict[str, Any]) -> None:
    (bucket_id, bucket), *others = _resources(template, "AWS::S3::Bucket").items()
    assert not others
    props = bucket["Properties"]
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms", "aws:kms:dsse")
    block = props["PublicAccessBlockConfiguration"]
    names = ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
    assert all(block[name] is True for name in names)
    (policy,) = _resources(template, "AWS::S3::BucketPolicy").values()
    assert policy["Properties"]["Bucket"] == {"Ref": bucket_id}
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    deny = [s for s in statements if s["Effect"] == "Deny"]
    assert any(
        s["Principal"] == "*"
        and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        and {"Fn::GetAtt": [bucket_id, "Arn"]} in _listed(s["Resource"])
        and {"Fn::Sub": f"${{{bucket_id}.Arn}}/*"} in _listed(s["Resource"])
        for s in deny
    )
    # The only statement on the bucket itself is that deny: no Allow opens it to anyone.
    assert all(s["Effect"] == "Deny" for s in statements)


def test_iam_is_least_privilege(template: dict[str, Any]) -> None:
    statements = list(_statements(template))
    assert statements
    for owner, statement in statements:
        assert statement["Effect"] == "Allow", owner
        for action in _listed(statement["Action"]):
            assert action != "*" and not action.endswith(":*") and "*" not in action, (owner, action)
        for resource in _listed(statement["Resource"]):
            assert resource != "*" or set(_listed(statement["Action"])) <= _XRAY, (owner, statement)
    for role in _resources(template, "AWS::IAM::Role").values():
        assert "ManagedPolicyArns" not in role["Properties"]
        (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}


def test_functions_read_only_the_index_prefix_and_invoke_only_each_other(template: dict[str, Any]) -> None:
    functions = _resources(template, "AWS::Serverless::Function")
    names = {f["Properties"]["FunctionName"]["Fn::Sub"] for f in functions.values()}
    own_arn = re.compile(r"^arn:\$\{AWS::Partition\}:lambda:\$\{AWS::Region\}:\$\{AWS::AccountId\}:function:(.+)$")
    actions: dict[str, set[str]] = {}
    for owner, statement in _statements(template):
        for action in _listed(statement["Action"]):
            actions.setdefault(owner, set()).add(action)
            resources = _listed(statement["Resource"])
            if action == "s3:GetObject":
                assert resources == [{"Fn::Sub": "arn:${AWS::Partition}:s3:::${IndexBucket}/${IndexPrefix}*"}]
            elif action == "s3:ListBucket":
                assert resources == [{"Fn::GetAtt": ["IndexBucket", "Arn"]}]
                assert statement["Condition"] == {"StringLike": {"s3:prefix": {"Fn::Sub": "${IndexPrefix}*"}}}
            elif action in _XRAY:
                assert resources == ["*"]
            elif action == "lambda:InvokeFunction":
                for resource in resources:
                    match = own_arn.match(resource["Fn::Sub"])
                    assert match and match.group(1) in names, resource
            else:
                assert action in ("logs:CreateLogStream", "logs:PutLogEvents"), action
                assert all(set(r) == {"Fn::GetAtt"} and r["Fn::GetAtt"][1] == "Arn" for r in resources)
    assert "lambda:InvokeFunction" not in actions["ProcessorRole"]
    assert {"lambda:InvokeFunction", "s3:GetObject", "s3:ListBucket"} <= actions["CoordinatorRole"]


def test_functions_open_only_the_prefix_iam_lets_them_read(template: dict[str, Any]) -> None:
    roots = template["Globals"]["Function"]["Environment"]["Variables"]["SQUASH_INDEX_ROOTS"]
    # The same bucket and prefix as the s3:GetObject and s3:ListBucket grants above.
    assert roots == {"Fn::Sub": "s3://${IndexBucket}/${IndexPrefix}"}
    for spec in load_functions(TEMPLATE, parameters={"IndexPrefix": "team/indexes/"}):
        config = RuntimeConfig.from_env(spec.environment)
        assert config.index_roots == ("s3://local-indexbucket/team/indexes/",), spec.name


def test_nothing_is_publicly_invocable(template: dict[str, Any]) -> None:
    kinds = {resource["Type"] for resource in template["Resources"].values()}
    assert "AWS::Lambda::Url" not in kinds
    for permission in _resources(template, "AWS::Lambda::Permission").values():
        assert permission["Properties"]["Principal"] != "*"
    for name, function in _resources(template, "AWS::Serverless::Function").items():
        props = {**template["Globals"]["Function"], **function["Properties"]}
        # Events would add triggers (API Gateway, URLs) and their invoke permissions.
        assert "FunctionUrlConfig" not in props and "Events" not in props, name
        assert "Role" in props and "Policies" not in props, name


def test_local_stack_loads_the_template() -> None:
    specs = {spec.logical_id: spec for spec in load_functions(TEMPLATE)}
    slots = generate_template.DEFAULT_PROCESSORS
    assert set(specs) == {"Coordinator", "Allocator", *(f"Processor{i}" for i in range(slots))}
    for logical_id, spec in specs.items():
        assert spec.handler == "app.lambda_handler"
        assert (spec.code_uri / "app.py").is_file(), logical_id
        config = RuntimeConfig.from_env(spec.environment)
        assert config.coordinator_function == specs["Coordinator"].name == "local-coordinator"
        assert config.allocator_function == specs["Allocator"].name
        assert config.processor_functions == tuple(specs[f"Processor{i}"].name for i in range(slots))
        assert config.allocator_concurrency == specs["Allocator"].reserved_concurrency
        assert config.processor_concurrency == specs["Processor0"].reserved_concurrency
        # A caller waits longer than any function it calls may run.
        assert config.invoke_timeout >= max(s.timeout for s in specs.values())
    timeouts = [specs[name].timeout for name in ("Processor0", "Allocator", "Coordinator")]
    assert timeouts == sorted(timeouts) and len(set(timeouts)) == 3
    assert specs["Processor0"].memory_size >= specs["Allocator"].memory_size
    # A stack named "squash" gets RuntimeConfig's default names, so embedded and deployed runs agree.
    env = {name: value.replace("local-", "squash-") for name, value in specs["Coordinator"].environment.items()}
    renamed, defaults = RuntimeConfig.from_env(env), RuntimeConfig()
    assert renamed.coordinator_function == defaults.coordinator_function
    assert renamed.allocator_function == defaults.allocator_function
    assert renamed.processor_functions == defaults.processor_functions


def test_tracing_is_a_parameter_off_by_default(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["Tracing"]
    assert parameter["Default"] == "PassThrough" and set(parameter["AllowedValues"]) == {"PassThrough", "Active"}
    function = template["Globals"]["Function"]
    assert function["Tracing"] == {"Ref": "Tracing"}
    assert function["Environment"]["Variables"]["SQUASH_TRACING"] == {"Ref": "Tracing"}
    assert template["Conditions"]["Traced"] == {"Fn::Equals": [{"Ref": "Tracing"}, "Active"]}
    for role in _resources(template, "AWS::IAM::Role").values():
        (policy,) = role["Properties"]["Policies"]
        traced = [s["Fn::If"] for s in policy["PolicyDocument"]["Statement"] if "Fn::If" in s]
        assert traced == [
            ["Traced", {"Effect": "Allow", "Action": sorted(_XRAY), "Resource": "*"}, {"Ref": "AWS::NoValue"}]
        ]
