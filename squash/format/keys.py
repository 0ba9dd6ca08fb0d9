"""Every object key of a stored index, relative to the index's store root. No other module builds keys.

Layout::

    manifests/v0000000001.msgpack      one per published version; the commit point of a build
    builds/<build_id>/routing.sqr      all partitions' attribute codes, for the planner
    builds/<build_id>/part-00000.sqp   one immutable object per partition
    builds/<build_id>/write-probe      written and deleted first, to check the destination takes writes

A build writes only under its own ``builds/<build_id>/`` prefix, so nothing it writes is visible to readers
until its manifest lands.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

MANIFEST_PREFIX = "manifests/"
BUILD_PREFIX = "builds/"

_MANIFEST_RE = re.compile(r"manifests/v(\d{10})\.msgpack")
_BUILD_ID_RE = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{12}")
_BUILD_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_VERSION = 10**10 - 1


def new_build_id(now: datetime | None = None) -> str:
    """A unique build id that sorts by creation time, e.g. ``20250101T120000Z-0123456789ab``."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime(_BUILD_TIME_FORMAT)
    return f"{stamp}-{uuid.uuid4().hex[:12]}"


def is_build_id(build_id: str) -> bool:
    return isinstance(build_id, str) and _BUILD_ID_RE.fullmatch(build_id) is not None


def build_time(build_id: str) -> datetime:
    """When the build with ``build_id`` started (UTC)."""
    return datetime.strptime(build_id.partition("-")[0], _BUILD_TIME_FORMAT).replace(tzinfo=UTC)


def build_prefix(build_id: str) -> str:
    if not is_build_id(build_id):
        raise ValueError(f"invalid build id {build_id!r}")
    return f"{BUILD_PREFIX}{build_id}/"


def partition_key(build_id: str, partition: int) -> str:
    return f"{build_prefix(build_id)}part-{partition:05d}.sqp"


def routing_key(build_id: str) -> str:
    return f"{build_prefix(build_id)}routing.sqr"


def probe_key(build_id: str) -> str:
    return f"{build_prefix(build_id)}write-probe"


def build_id_of(key: str) -> str | None:
    """The build id of an object key under ``builds/``, or None for any other key."""
    if not key.startswith(BUILD_PREFIX):
        return None
    candidate = key[len(BUILD_PREFIX) :].partition("/")[0]
    return candidate if is_build_id(candidate) else None


def manifest_key(version: int) -> str:
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"index version {version} is outside 1..{MAX_VERSION}")
    return f"{MANIFEST_PREFIX}v{version:010d}.msgpack"


def manifest_version(key: str) -> int | None:
    """The version a manifest key names, or None if ``key`` is not a manifest key."""
    match = _MANIFEST_RE.fullmatch(key)
    return int(match.group(1)) if match else None
