"""An object store on the local file system (``file:///abs/path`` or a plain path)."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from squash.errors import InvalidInputError, ObjectNotFoundError, PreconditionFailedError, StorageError
from squash.storage.base import (
    LOCAL_COALESCE_GAP,
    ObjectInfo,
    StoreStats,
    check_key,
    check_prefix,
    check_range,
    get_coalesced,
)

# Temporary files live next to their target so that os.replace and os.link never cross file systems;
# this suffix keeps them out of listings and is refused in keys.
_TMP_SUFFIX = ".squash-tmp"


class LocalStore:
    """Objects as files under a root directory; each key segment is a path component.

    Writes go to a temporary file that is fsynced and then renamed (or hard-linked, for `put_if_absent`)
    into place, so readers see either the old object or the whole new one. The root is created on first
    write. A key cannot name both an object and a "directory" of other objects (``a`` and ``a/b``), which
    S3 allows: such a write raises `StorageError`.
    """

    def __init__(self, root: str | os.PathLike[str], *, coalesce_gap: int = LOCAL_COALESCE_GAP) -> None:
        self.root = os.path.abspath(root)
        self.uri = Path(self.root).as_uri()
        self.coalesce_gap = coalesce_gap
        self.stats = StoreStats()

    def __repr__(self) -> str:
        return f"LocalStore({self.uri!r})"

    def _path(self, key: str) -> str:
        check_key(key)
        if key.endswith(_TMP_SUFFIX):
            raise InvalidInputError(f"invalid object key {key!r}: the suffix {_TMP_SUFFIX!r} is reserved")
        return os.path.join(self.root, *key.split("/"))

    @contextlib.contextmanager
    def _reading(self, key: str, path: str) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            # A directory, or a path through a file, is no object, just as on S3.
            raise ObjectNotFoundError(f"no object {key!r} in {self.uri}", key=key) from None
        except OSError as e:
            raise StorageError(f"cannot read object {key!r} at {path}: {e}", key=key) from e

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """Return the file's bytes, or only those in ``byte_range``."""
        path = self._path(key)
        window = None if byte_range is None else check_range(byte_range)
        if window is not None and window[0] == window[1]:
            return b""
        with self._reading(key, path), open(path, "rb") as f:
            if window is None:
                data = f.read()
            else:
                f.seek(window[0])
                data = f.read(window[1] - window[0])
        self.stats.record_get(len(data))
        return data

    def get_many(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Return the bytes of each range, merging ranges at most ``coalesce_gap`` bytes apart."""
        self._path(key)
        return get_coalesced(self.get, key, ranges, self.coalesce_gap)

    def head(self, key: str) -> ObjectInfo:
        """Return the file's size and an etag derived from its inode, mtime and size."""
        path = self._path(key)
        with self._reading(key, path):
            st = os.stat(path)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(path)
        return _info(key, st)

    def put(self, key: str, data: bytes) -> ObjectInfo:
        """Write the file atomically, replacing any previous version."""
        path = self._path(key)
        try:
            tmp, st = _write_temp(path, data)
            try:
                os.replace(tmp, path)
            except BaseException:
                _discard(tmp)
                raise
            _fsync_dir(os.path.dirname(path))
        except OSError as e:
            raise StorageError(f"cannot write object {key!r} at {path}: {e}", key=key) from e
        self.stats.record_put(len(data))
        return _info(key, st)

    def put_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        """Write the file unless it exists; raise `PreconditionFailedError` if it does.

        ``os.link`` refuses an existing target atomically, so of several racing writers exactly one wins.
        """
        path = self._path(key)
        try:
            tmp, st = _write_temp(path, data)
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PreconditionFailedError(f"object {key!r} already exists in {self.uri}", key=key) from None
            finally:
                _discard(tmp)
            _fsync_dir(os.path.dirname(path))
        except OSError as e:
            raise StorageError(f"cannot write object {key!r} at {path}: {e}", key=key) from e
        self.stats.record_put(len(data))
        return _info(key, st)

    def list(self, prefix: str = "") -> list[str]:
        """Return the keys that start with ``prefix``, sorted; temporary files are skipped."""
        check_prefix(prefix)
        base_key = prefix.rpartition("/")[0]
        base = os.path.join(self.root, *base_key.split("/")) if base_key else self.root

        def fail(e: OSError) -> None:
            # A missing base directory means no keys; anything else (permissions, I/O) must surface.
            if not isinstance(e, FileNotFoundError | NotADirectoryError):
                raise StorageError(f"cannot list {prefix!r} in {self.uri}: {e}", key=prefix) from e

        keys = []
        for dirpath, dirnames, filenames in os.walk(base, onerror=fail):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            # Descend only into directories whose keys can still start with the prefix.
            dirnames[:] = [
                d for d in dirnames if (rel + d + "/").startswith(prefix) or prefix.startswith(rel + d + "/")
            ]
            keys.extend(
                rel + name for name in filenames if (rel + name).startswith(prefix) and not name.endswith(_TMP_SUFFIX)
            )
        return sorted(keys)

    def list_info(self, prefix: str = "") -> list[ObjectInfo]:
        """Return the metadata of the files whose keys start with ``prefix``, sorted by key."""
        infos = []
        for key in self.list(prefix):
            path = self._path(key)
            try:
                infos.append(_info(key, os.stat(path)))
            except FileNotFoundError:
                continue  # deleted since it was listed, as an S3 listing may also be outdated by a delete
            except OSError as e:
                raise StorageError(f"cannot list {prefix!r} in {self.uri}: {e}", key=key) from e
        return infos

    def delete(self, key: str) -> None:
        """Remove the file if it exists, and the directories it leaves empty (never the root)."""
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as e:
            raise StorageError(f"cannot delete object {key!r} at {path}: {e}", key=key) from e
        _prune(os.path.dirname(path), self.root)

    def abandoned_writes(self, before: datetime, *, delete: bool = False) -> list[ObjectInfo]:
        """Temporary files of writes whose writer died (killed before it could clean up), last modified
        before ``before``; removed too if ``delete``. Keys are their paths relative to the root.

        They are invisible to `list`, so nothing else ever finds them.
        """
        found = []
        cutoff = before.timestamp()
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if not name.endswith(_TMP_SUFFIX):
                    continue
                try:
                    st = os.stat(path)
                    if st.st_mtime >= cutoff:
                        continue
                    if delete:
                        os.unlink(path)
                except FileNotFoundError:
                    continue  # its writer finished or cleaned up meanwhile
                except OSError as e:
                    raise StorageError(f"cannot remove abandoned temporary file {path}: {e}") from e
                found.append(_info(os.path.relpath(path, self.root).replace(os.sep, "/"), st))
                if delete:
                    _prune(dirpath, self.root)
        return sorted(found, key=lambda info: info.key)


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key, st.st_size, f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}")


def _prune(directory: str, root: str) -> None:
    """Remove ``directory`` and its parents below ``root`` while they are empty."""
    while os.path.normpath(directory) != os.path.normpath(root):
        try:
            os.rmdir(directory)
        except OSError:
            return  # not empty (or already gone): parents are not empty either
        directory = os.path.dirname(directory)


def _open_new(directory: str, tmp: str) -> BinaryIO:
    os.makedirs(directory, exist_ok=True)
    try:
        return open(tmp, "xb")
    except FileNotFoundError:
        # A concurrent delete pruned the directory between makedirs and open: make it again, once.
        os.makedirs(directory, exist_ok=True)
        return open(tmp, "xb")


def _write_temp(path: str, data: bytes) -> tuple[str, os.stat_result]:
    """Write ``data`` durably to a new temporary file beside ``path``; return its name and status."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
    try:
        with _open_new(directory, tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            st = os.fstat(f.fileno())
    except BaseException:
        _discard(tmp)
        raise
    return tmp, st


def _discard(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_dir(directory: str) -> None:
    # A rename or link is durable only once the directory entry itself reaches the disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
