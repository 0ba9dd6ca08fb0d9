"""Which index locations a function may open: the allow-list of index roots (``RuntimeConfig.index_roots``).

A deployed function opens whatever URI its caller names, with its own permissions, so it must refuse every
location but the ones it was deployed for (the template's ``IndexBucket``/``IndexPrefix``): otherwise a caller
could make it read local files or other buckets on the caller's behalf (a confused deputy).

A URI is allowed when it is exactly a root or lies under one, segment by segment: ``s3://b/prefix`` allows
``s3://b/prefix`` and ``s3://b/prefix/name``, never ``s3://b/prefix2`` or ``s3://other/prefix``. URIs are
compared as their store opens them (scheme case-insensitive, one trailing ``/`` ignored) and are refused
rather than normalised when they could mean something else elsewhere: ``.``/``..``/empty segments, percent
signs, backslashes and control characters. File paths are compared after resolving symlinks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from squash.errors import AccessDeniedError, InvalidInputError
from squash.storage import file_path

# Every location this process can open (the embedded mode: the caller could open it itself).
ANY = "*"
# S3's rules for bucket names (lowercase letters, digits, dots and hyphens; 3-63 characters).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f%\\]")
# Longest URI quoted back in an error message.
_SHOWN = 200

Location = tuple[str, ...]


def _segments(text: str) -> Location:
    """The ``/``-separated segments of ``text``, one trailing ``/`` ignored; ValueError for ambiguous ones."""
    if text.endswith("/"):
        text = text[:-1]
    if not text:
        return ()
    parts = tuple(text.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError("empty, '.' and '..' segments are not allowed")
    return parts


def location(uri: str) -> Location:
    """(scheme, segments...) of ``uri`` as its store would open it; ValueError if it is ambiguous."""
    if not isinstance(uri, str) or not uri:
        raise ValueError("the index URI must be a non-empty string")
    if _FORBIDDEN.search(uri):
        raise ValueError("percent signs, backslashes and control characters are not allowed")
    scheme, sep, rest = uri.partition("://")
    scheme = scheme.lower() if sep else "file"
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"{bucket!r} is not a valid S3 bucket name")
        return ("s3", bucket, *_segments(prefix))
    if scheme == "memory":
        if rest.endswith("/"):
            raise ValueError("a memory store name has no trailing '/'")
        return ("memory", *_segments(rest))
    if scheme == "file":
        try:
            path = file_path(uri) if sep else uri
        except InvalidInputError as exc:
            raise ValueError(str(exc)) from None
        return ("file", *_segments(os.path.realpath(path).lstrip("/")))
    raise ValueError(f"unsupported scheme {scheme!r}")


def check_roots(roots: Sequence[str]) -> None:
    """Raise `InvalidInputError` naming the first configured root that is not a valid location."""
    for root in roots:
        try:
            parts = location(root)
        except ValueError as exc:
            raise InvalidInputError(f"index root {root!r} is not a valid location: {exc}") from None
        if parts[0] != "file" and len(parts) < 2:
            raise InvalidInputError(f"index root {root!r} names no bucket or store name")


def check_allowed(uri: str, roots: Sequence[str] | None) -> None:
    """Raise `AccessDeniedError` unless ``uri`` is one of ``roots`` or under one (None allows anything)."""
    if roots is None:
        return
    shown = repr(uri)[:_SHOWN]
    allowed = ", ".join(roots) if roots else "none (set SQUASH_INDEX_ROOTS)"
    try:
        parts = location(uri)
    except ValueError as exc:
        raise AccessDeniedError(f"index URI {shown} is refused: {exc}; allowed index roots: {allowed}") from None
    for root in roots:
        base = location(root)
        if parts[: len(base)] == base:
            return
    raise AccessDeniedError(
        f"index URI {shown} is not under an allowed index root; allowed: {allowed}. Build the index under one "
        "of them, or deploy with its root in IndexBucket/IndexPrefix"
    )
