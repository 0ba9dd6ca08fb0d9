"""The HTTP side of the local Lambda: ``POST /2015-03-31/functions/{name}/invocations`` checked as AWS checks
it (size limits, strict JSON, client context, function references and qualifiers, invocation types), and
``GET /squash-local/stats``; invocations run through `squash.local.lambda_service.LambdaService`."""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from squash.local.function_pool import FunctionPool
from squash.local.sandbox import Invocation, QuietHandler, QuietHTTPServer

if TYPE_CHECKING:
    from squash.local.lambda_service import LambdaService

log = logging.getLogger(__name__)

REQUEST_LIMIT = 6_291_456  # synchronous invoke payload, as on AWS
ASYNC_REQUEST_LIMIT = 1_048_576  # Event invoke payload, as on AWS
STATS_PATH = "/squash-local/stats"
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")
# name, name:qualifier, account:function:name[:qualifier], or a full function ARN.
_FUNCTION_REF = re.compile(
    r"^(?:arn:aws[\w-]*:lambda:[\w-]+:\d{12}:function:|\d{12}:function:)?([\w-]+)(?::([\w$-]+))?$"
)


def _strict_json(payload: bytes) -> object:
    """``payload`` parsed as Lambda's Invoke parses it: strict JSON, which has no NaN or Infinity.

    Raises:
        ValueError: naming what is wrong.
    """
    try:
        return json.loads(payload, parse_constant=_non_standard_token)
    except RecursionError:
        raise ValueError("nested deeper than the parser allows") from None


def _non_standard_token(token: str) -> None:
    raise ValueError(f"Non-standard token '{token}': strict JSON has no NaN or Infinity")


def _client_context(header: str) -> str | None:
    """The decoded client context, or None unless it is base64 of a JSON object (as AWS requires)."""
    try:
        text = base64.b64decode(header, validate=True).decode()
        return text if isinstance(_strict_json(text.encode()), dict) else None
    except ValueError:  # also a bad base64 (binascii.Error) or UTF-8 (UnicodeDecodeError)
        return None


def _error_body(message: str, **extra: str) -> bytes:
    return json.dumps({"Type": "User", "message": message, **extra}).encode()


class InvokeHandler(QuietHandler):
    """``POST /2015-03-31/functions/{name}/invocations`` and ``GET /squash-local/stats``."""

    server: QuietHTTPServer

    @property
    def service(self) -> LambdaService:
        return self.server.service  # type: ignore[attr-defined, no-any-return]

    def do_GET(self) -> None:
        if urlsplit(self.path).path == STATS_PATH:
            body = json.dumps({"functions": self.service.stats()}).encode()
            self.reply(200, body, {"Content-Type": "application/json"})
        else:
            self._error(404, "UnknownOperationException", "Unknown operation")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        match = _INVOKE_PATH.match(url.path)
        if match is None:
            self.read_body()
            self._error(404, "UnknownOperationException", "Unknown operation")
            return
        invocation_type = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        limit = ASYNC_REQUEST_LIMIT if invocation_type == "Event" else REQUEST_LIMIT
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            self._discard(length)
            message = f"Request must be smaller than {limit} bytes for the InvokeFunction operation"
            self._error(413, "RequestTooLargeException", message)
            return
        # AWS refuses a body that is not strict JSON and hands an empty one to the function as {}.
        payload = self.rfile.read(length) or b"{}"
        try:
            _strict_json(payload)
        except ValueError as exc:
            message = f"Could not parse request body into json: Could not parse payload into json: {exc}"
            self._error(400, "InvalidRequestContentException", message)
            return
        pool = self._lookup(unquote(match.group(1)), parse_qs(url.query).get("Qualifier", [None])[0])
        if pool is None:
            return
        if invocation_type == "DryRun":
            self.reply(204)
            return
        if invocation_type not in ("Event", "RequestResponse"):
            self._error(400, "InvalidParameterValueException", f"Invalid invocation type: {invocation_type}")
            return
        context = self.headers.get("X-Amz-Client-Context")
        client_context = _client_context(context) if context else None
        if context and client_context is None:
            message = "Client context must be a valid Base64-encoded JSON object."
            self._error(400, "InvalidRequestContentException", message)
            return
        arn = pool.spec.arn(self.service.region, self.service.account_id)
        invocation = Invocation(payload, function_arn=arn, client_context=client_context)
        if invocation_type == "Event":
            threading.Thread(target=self._invoke_async, args=(pool, invocation), daemon=True).start()
            self.reply(202, headers={"x-amzn-RequestId": invocation.request_id})
        else:
            self._invoke_sync(pool, invocation)

    def _lookup(self, reference: str, qualifier: str | None) -> FunctionPool | None:
        match = _FUNCTION_REF.match(reference)
        name, inline_qualifier = match.groups() if match else (reference, None)
        pool = self.service.pool(name)
        qualifier = qualifier or inline_qualifier
        if pool is None or qualifier not in (None, "$LATEST", pool.spec.alias):
            arn = f"arn:aws:lambda:{self.service.region}:{self.service.account_id}:function:{reference}"
            self._error(404, "ResourceNotFoundException", f"Function not found: {arn}")
            return None
        return pool

    def _invoke_sync(self, pool: FunctionPool, invocation: Invocation) -> None:
        try:
            admitted = self.service.invoke(pool, invocation, wait=False)
        except OSError as exc:  # a worker could not be started
            self._error(500, "ServiceException", f"could not start a worker for {pool.spec.name}: {exc}")
            return
        if not admitted:
            reason = pool.throttle_reason
            self._error(429, "TooManyRequestsException", "Rate Exceeded.", Reason=reason)
            return
        result = invocation.result
        assert result is not None
        headers = {
            "Content-Type": "application/json",
            "X-Amz-Executed-Version": "$LATEST",
            "x-amzn-RequestId": invocation.request_id,
        }
        if result.function_error:
            headers["X-Amz-Function-Error"] = result.function_error
        self.reply(200, result.body, headers)

    def _invoke_async(self, pool: FunctionPool, invocation: Invocation) -> None:
        self.service.invoke(pool, invocation, wait=True)
        result = invocation.result
        if result is not None and result.function_error:
            detail = result.body[:2000].decode(errors="replace")
            log.warning("%s: Event invocation %s failed: %s", pool.spec.name, invocation.request_id, detail)

    def _discard(self, length: int) -> None:
        # Read the oversized body so the client sees our 413 rather than a reset connection.
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:
                break
            length -= len(chunk)

    def _error(self, status: int, error_type: str, message: str, **extra: str) -> None:
        headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error_type}
        self.reply(status, _error_body(message, **extra), headers)
