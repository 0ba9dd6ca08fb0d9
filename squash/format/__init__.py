"""The stored index format: keys, the checksummed section container, partition/routing objects, manifests.

See docs/format.md for the byte layout and the commit protocol.
"""

from squash.format.manifest import Manifest, ObjectEntry
from squash.format.reader import (
    Published,
    StoredIndex,
    find_manifest,
    index_changed,
    list_versions,
    load_manifest,
    open_index,
)
from squash.format.writer import WriteResult, collect_garbage, write_index

__all__ = [
    "Manifest",
    "ObjectEntry",
    "Published",
    "StoredIndex",
    "WriteResult",
    "collect_garbage",
    "find_manifest",
    "index_changed",
    "list_versions",
    "load_manifest",
    "open_index",
    "write_index",
]
