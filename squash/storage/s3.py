"""An object store on Amazon S3, or anything that speaks its API (``s3://bucket/prefix``).

boto3 is imported on first use, not with this module, because import time is cold-start time on Lambda.
The endpoint is never set here: boto3 reads ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``, which is how
the same code reaches a local emulator.

A boto3 client costs about 0.4 MB and tens of milliseconds to build, and is thread-safe, so every store of
the process shares one (`shared_client`) per endpoint, region and credentials: a store is a cheap view of a
bucket and prefix, and a warm function asked about thousands of index URIs still holds one client.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

from squash.errors import (
    InvalidInputError,
    ObjectNotFoundError,
    PreconditionFailedError,
    StorageError,
    ThrottledError,
)
from squash.storage.base import (
    S3_COALESCE_GAP,
    ObjectInfo,
    StoreStats,
    check_key,
    check_prefix,
    check_range,
    get_coalesced,
)

# Matches the widest thread-pool fan-out we run against one client, so threads never wait for a connection.
MAX_POOL_CONNECTIONS = 64

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412"})
_THROTTLED_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"}
)

# boto3's default session is not safe to use from several threads at once, so clients are built one at a time.
_CLIENT_LOCK = threading.Lock()
# What boto3 reads from the environment to choose an S3 client's endpoint, region and credentials.
_CLIENT_ENVIRONMENT = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SESSION_TOKEN",
)
# Shared clients kept: one per environment above, which only the process (never a request) sets.
_CLIENTS_KEPT = 4
_clients: OrderedDict[tuple[str | None, ...], Any] = OrderedDict()


def shared_client() -> Any:
    """The process's boto3 S3 client for the current endpoint, region and credentials, built on first use."""
    key = tuple(os.environ.get(name) for name in _CLIENT_ENVIRONMENT)
    with _CLIENT_LOCK:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(retries={"mode": "standard"}, max_pool_connections=MAX_POOL_CONNECTIONS)
            client = _clients[key] = boto3.client("s3", config=config)
            while len(_clients) > _CLIENTS_KEPT:
                _clients.popitem(last=False)
        _clients.move_to_end(key)
        return client


class _RangeNotSatisfiable(StorageError):
    """S3 answered 416: the range starts at or past the end of the object."""


class S3Store:
    """Objects in one S3 bucket under an optional key prefix.

    Pass ``client`` to use a preconfigured (or stubbed) boto3 S3 client; otherwise the store uses the
    process's `shared_client`, so a store costs no more than its bucket and prefix.
    """

    def __init__(
        self, bucket: str, prefix: str = "", *, client: Any = None, coalesce_gap: int = S3_COALESCE_GAP
    ) -> None:
        if not bucket or "/" in bucket:
            raise InvalidInputError(f"invalid S3 bucket name {bucket!r}; use a URI like 's3://bucket/prefix'")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.coalesce_gap = coalesce_gap
        self.stats = StoreStats()
        self._root = f"{prefix}/" if prefix else ""
        self._client = client

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    @property
    def client(self) -> Any:
        """The injected boto3 S3 client, or else the shared one (fixed at first use)."""
        if self._client is None:
            self._client = shared_client()
        return self._client

    def _object_key(self, key: str) -> str:
        """The S3 key of a store key or listing prefix: the only place keys are joined to the prefix."""
        return self._root + key

    @contextlib.contextmanager
    def _translated(self, operation: str, key: str) -> Iterator[None]:
        """Turn botocore exceptions raised inside the block into Squash storage errors."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            raise self._client_error(e, operation, key) from e
        except BotoCoreError as e:
            where = f"s3://{self.bucket}/{self._object_key(key)}"
            raise StorageError(f"S3 {operation} of {where} failed: {e}", key=key) from e

    def _client_error(self, e: Any, operation: str, key: str) -> StorageError:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        where = f"s3://{self.bucket}/{self._object_key(key)}"
        message = error.get("Message")
        detail = f"S3 {operation} of {where} failed with {code or status}" + (f": {message}" if message else "")
        # NoSuchBucket is also a 404, but it is a configuration error rather than a missing object.
        if code in _NOT_FOUND_CODES:
            return ObjectNotFoundError(f"no object {key!r} in {self.uri}", key=key)
        if code in _PRECONDITION_CODES or status == 412:
            return PreconditionFailedError(
                f"object {key!r} in {self.uri} already exists or is being written concurrently ({code})",
                key=key,
            )
        if code in _THROTTLED_CODES or status == 503:
            return ThrottledError(detail, key=key)
        if code == "InvalidRange":
            return _RangeNotSatisfiable(detail, key=key)
        return StorageError(detail, key=key)

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """Return the object's bytes, or only those in ``byte_range`` (one ranged GET)."""
        request = {"Bucket": self.bucket, "Key": self._object_key(check_key(key))}
        if byte_range is not None:
            start, end = check_range(byte_range)
            if start == end:
                return b""
            # HTTP byte ranges include their last byte.
            request["Range"] = f"bytes={start}-{end - 1}"
        try:
            with self._translated("GetObject", key):
                data = self.client.get_object(**request)["Body"].read()
        except _RangeNotSatisfiable:
            return b""
        self.stats.record_get(len(data))
        return data

    def get_many(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Return the bytes of each range, with one GET per group of ranges at most ``coalesce_gap`` apart."""
        return get_coalesced(self.get, check_key(key), ranges, self.coalesce_gap)

    def head(self, key: str) -> ObjectInfo:
        """Return the object's size and ETag (HeadObject)."""
        with self._translated("HeadObject", key):
            response = self.client.head_object(Bucket=self.bucket, Key=self._object_key(check_key(key)))
        return ObjectInfo(key, response["ContentLength"], response["ETag"].strip('"'))

    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Write the object (PutObject); S3 replaces it atomically."""
        return self._put(key, data, {})

    def put_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        """Write the object unless it exists, with an S3 conditional write (``If-None-Match: *``)."""
        return self._put(key, data, {"IfNoneMatch": "*"})

    def _put(self, key: str, data: bytes, conditions: dict[str, str]) -> ObjectInfo:
        with self._translated("PutObject", key):
            response = self.client.put_object(
                Bucket=self.bucket, Key=self._object_key(check_key(key)), Body=data, **conditions
            )
        self.stats.record_put(len(data))
        return ObjectInfo(key, len(data), response["ETag"].strip('"'))

    def list(self, prefix: str = "") -> list[str]:
        """Return the keys that start with ``prefix``, relative to the store prefix, sorted."""
        return [info.key for info in self.list_info(prefix)]

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Return each listed object's key, size and ETag (ListObjectsV2 returns all three), sorted by key."""
        full_prefix = self._object_key(check_prefix(prefix))
        infos: list[ObjectInfo] = []
        with self._translated("ListObjectsV2", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix):
                infos.extend(
                    ObjectInfo(item["Key"][len(self._root) :], item["Size"], item["ETag"].strip('"'))
                    for item in page.get("Contents", ())
                )
        return sorted(infos, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        """Remove the object; S3 does not report missing keys."""
        with self._translated("DeleteObject", key):
            self.client.delete_object(Bucket=self.bucket, Key=self._object_key(check_key(key)))
