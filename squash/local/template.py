"""Function specs read from a SAM ``template.yaml``, so the local stack and AWS share one configuration.

Only what a local worker needs is read: name, code folder, handler, memory, timeout, reserved concurrency and
environment, with ``Globals.Function`` merged in. CloudFormation intrinsics are tolerated: ``!Ref`` to a
parameter resolves to its value (override or ``Default``), ``!Ref``/``!GetAtt …Arn`` to a function or bucket
resolve to its local name and ARN (an unnamed bucket is ``<stack>-<logical id in lowercase>``), and
``!Sub``/``!Join``/``!Select``/``!Split`` resolve when their parts do. An environment variable whose value
cannot be resolved (``!ImportValue``, ``!If``, attributes of other resources) is left out with a warning;
pass it through ``parameters`` or the stack environment instead.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from squash.errors import InvalidInputError

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
DEFAULT_ACCOUNT = "123456789012"
_FUNCTION_TYPE = "AWS::Serverless::Function"
# Properties that name a resource, so a !Ref to it can resolve to that name.
_NAME_PROPERTIES = ("FunctionName", "BucketName", "TableName", "QueueName", "TopicName")
_SUB_VARIABLE = re.compile(r"\$\{([^}!][^}]*)\}")


@dataclass(frozen=True)
class FunctionSpec:
    """How to run one function locally. ``name`` is ``FunctionName`` if set, else the logical id."""

    name: str
    code_uri: Path
    handler: str
    logical_id: str = ""
    memory_size: int = 128
    timeout: float = 3.0
    reserved_concurrency: int | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    alias: str | None = None

    def arn(self, region: str = DEFAULT_REGION, account_id: str = DEFAULT_ACCOUNT) -> str:
        return f"arn:aws:lambda:{region}:{account_id}:function:{self.name}"


class _Unresolved(Exception):
    """An intrinsic whose value only CloudFormation knows."""


def _intrinsic(loader: Any, suffix: str, node: Any) -> dict[str, Any]:
    import yaml

    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    key = suffix if suffix in ("Ref", "Condition") else f"Fn::{suffix}"
    return {key: value}


def read_template(path: Path) -> dict[str, Any]:
    """The template as plain data, short-form intrinsics expanded (``!Ref x`` -> ``{"Ref": "x"}``)."""
    import yaml

    class CfnLoader(yaml.SafeLoader):
        """SafeLoader that knows CloudFormation's short tags."""

    CfnLoader.add_multi_constructor("!", _intrinsic)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=CfnLoader)  # a SafeLoader subclass: no arbitrary objects
    except OSError as exc:
        raise InvalidInputError(f"cannot read the template {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("Resources"), dict):
        raise InvalidInputError(f"{path} is not a CloudFormation/SAM template (no Resources mapping)")
    return data


class _Resolver:
    """Evaluates the intrinsics a local run can know: parameters, pseudo parameters, function names/ARNs."""

    def __init__(self, template: dict[str, Any], parameters: Mapping[str, str], region: str, account: str):
        self.region = region
        self.account = account
        self.refs: dict[str, str] = {
            "AWS::Region": region,
            "AWS::AccountId": account,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": "local",
        }
        self.arns: dict[str, str] = {}
        for name, spec in (template.get("Parameters") or {}).items():
            if name in parameters:
                self.refs[name] = str(parameters[name])
            elif isinstance(spec, dict) and "Default" in spec:
                self.refs[name] = _scalar(spec["Default"])
        unknown = set(parameters) - set(template.get("Parameters") or {})
        if unknown:
            raise InvalidInputError(f"parameters not declared in the template: {sorted(unknown)}")
        for logical_id, resource in template["Resources"].items():
            props = resource.get("Properties") or {}
            named = next((props[prop] for prop in _NAME_PROPERTIES if prop in props), None)
            if named is not None:
                try:
                    self.refs[logical_id] = _scalar(self.resolve(named))
                except _Unresolved:
                    log.warning("resource %s: name not resolvable locally; !Ref to it fails", logical_id)
            if resource.get("Type") in (_FUNCTION_TYPE, "AWS::Lambda::Function"):
                name = self.refs.setdefault(logical_id, logical_id)
                self.arns[logical_id] = f"arn:aws:lambda:{region}:{account}:function:{name}"
            elif resource.get("Type") == "AWS::S3::Bucket":
                # An unnamed bucket gets a generated name, <stack>-<logical id> (CloudFormation adds a suffix).
                name = self.refs.setdefault(logical_id, f"{self.refs['AWS::StackName']}-{logical_id.lower()}")
                self.arns[logical_id] = f"arn:aws:s3:::{name}"

    def resolve(self, value: Any) -> Any:
        """``value`` with every intrinsic evaluated; raises `_Unresolved` when one cannot be."""
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {key: self.resolve(item) for key, item in value.items()}
        ((key, arg),) = value.items()
        if key == "Ref":
            if arg not in self.refs:
                raise _Unresolved(f"!Ref {arg}")
            return self.refs[arg]
        if key == "Fn::GetAtt":
            logical_id, attribute = arg if isinstance(arg, list) else str(arg).split(".", 1)
            if attribute != "Arn" or logical_id not in self.arns:
                raise _Unresolved(f"!GetAtt {logical_id}.{attribute}")
            return self.arns[logical_id]
        if key == "Fn::Sub":
            return self._sub(arg)
        if key == "Fn::Join":
            separator, items = self.resolve(arg)
            return str(separator).join(_scalar(item) for item in items)
        if key == "Fn::Select":
            index, items = self.resolve(arg)
            return items[int(index)]
        if key == "Fn::Split":
            separator, text = self.resolve(arg)
            return str(text).split(str(separator))
        if key.startswith("Fn::") or key == "Condition":
            raise _Unresolved(key)
        return {key: self.resolve(arg)}

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], self.resolve(arg[1]))

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return _scalar(variables[name])
            if "." in name:
                return str(self.resolve({"Fn::GetAtt": name.split(".", 1)}))
            return str(self.resolve({"Ref": name}))

        # ${!Literal} is CloudFormation's escape for a literal ${Literal}.
        return _SUB_VARIABLE.sub(replace, text).replace("${!", "${")


def _scalar(value: Any) -> str:
    """A scalar as CloudFormation stringifies it (YAML ``true`` -> ``"true"``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise _Unresolved(f"non-scalar value {value!r}")
    return str(value)


def _merge_globals(props: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **props}
    env_default = (defaults.get("Environment") or {}).get("Variables") or {}
    env_own = (props.get("Environment") or {}).get("Variables") or {}
    merged["Environment"] = {"Variables": {**env_default, **env_own}}
    return merged


def load_functions(
    path: str | Path,
    *,
    parameters: Mapping[str, str] | None = None,
    region: str = DEFAULT_REGION,
    account_id: str = DEFAULT_ACCOUNT,
) -> list[FunctionSpec]:
    """Every ``AWS::Serverless::Function`` in the SAM template at ``path``, in template order.

    ``parameters`` override the template's parameter defaults, like ``sam deploy --parameter-overrides``.
    ``CodeUri`` is taken relative to the template's folder and must be a local folder.
    """
    path = Path(path).resolve()
    template = read_template(path)
    resolver = _Resolver(template, parameters or {}, region, account_id)
    defaults = (template.get("Globals") or {}).get("Function") or {}
    specs = []
    for logical_id, resource in template["Resources"].items():
        if not isinstance(resource, dict) or resource.get("Type") != _FUNCTION_TYPE:
            continue
        props = _merge_globals(resource.get("Properties") or {}, defaults)
        specs.append(_function_spec(logical_id, props, resolver, path.parent))
    return specs


def _function_spec(logical_id: str, props: dict[str, Any], resolver: _Resolver, root: Path) -> FunctionSpec:
    def required(name: str, default: Any = None) -> Any:
        if name not in props and default is None:
            raise InvalidInputError(f"function {logical_id} in the template has no {name}")
        try:
            return resolver.resolve(props.get(name, default))
        except _Unresolved as exc:
            raise InvalidInputError(f"function {logical_id}: cannot resolve {name} locally ({exc})") from None

    code_uri = required("CodeUri")
    if not isinstance(code_uri, str) or not (root / code_uri).is_dir():
        raise InvalidInputError(f"function {logical_id}: CodeUri {code_uri!r} is not a folder under {root}")
    environment = {}
    for key, value in props["Environment"]["Variables"].items():
        try:
            environment[key] = _scalar(resolver.resolve(value))
        except _Unresolved as exc:
            log.warning("function %s: environment variable %s left out (%s)", logical_id, key, exc)
    reserved = required("ReservedConcurrentExecutions", -1)
    return FunctionSpec(
        name=resolver.refs[logical_id],
        code_uri=(root / code_uri).resolve(),
        handler=str(required("Handler")),
        logical_id=logical_id,
        memory_size=int(required("MemorySize", 128)),
        timeout=float(required("Timeout", 3)),
        reserved_concurrency=None if int(reserved) < 0 else int(reserved),
        environment=environment,
        alias=props.get("AutoPublishAlias") if isinstance(props.get("AutoPublishAlias"), str) else None,
    )
