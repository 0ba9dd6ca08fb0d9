"""The wire format between client, coordinator, allocators and processors (`wire`, `requests`, `responses`,
`metrics`).

Every message is a JSON object, the Lambda event or response::

    {"squash": 1, "kind": "processor_request", "index": {"uri": ..., "version": 3, "build": ...}, "k": 10, ...,
     "arrays": "<base64 of msgpack>"}

Bulk numbers never travel as JSON lists: ``arrays`` is the base64 text of one msgpack map from name to
``{"dtype": "<f4", "shape": [n, d], "data": <raw little-endian bytes>}``, which holds the query vectors, the
per-query filter index, and result ids, distances and per-query stats. That is 4/3 of the raw size, exact
for float32, and decodes with one ``numpy.frombuffer``.

Filters travel as their JSON, deduplicated: ``filters`` lists the distinct expressions and the int32 array
``filter_of`` says which one each query uses. Receivers compile them against the index schema, so a filter
is validated again where it is used; no bitmap ever crosses the wire. Every request names the index by URI,
manifest version and build id, so a rebuilt index is never served from a stale cache.

Requests may carry ``budget_ms`` (null or absent: no limit), the whole milliseconds the receiver has to
answer, counted from the moment the request reaches it: each node sets its own deadline from its arrival,
so no node depends on another machine's clock. The sender measures it when it sends
(`squash.runtime.calls.call`). Responses carry a per-query ``complete`` flag (bool array) and ``missing``,
the partitions that could not be searched, each ``{partition, error, message}``.

``from_event`` checks everything (known keys, JSON types, dtypes, shapes, sizes, ranges) and raises
`InvalidInputError` naming the message kind and field: a message is validated once, where it enters a
process, and one a process built itself from validated parts is never checked again. `split_request` keeps
each request and its expected response under the synchronous payload limit by splitting the query batch,
and encodes each part once: a sender only sets ``budget_ms`` in that payload at each attempt (`with_budget`).
The processor's search parameters travel typed (`SearchParams`, all of them), decoded once at its edge.
"""

from squash.runtime.protocol.metrics import (
    COUNTERS,
    MAX_COUNTERS,
    MAX_FUNCTIONS,
    ROLES,
    Metrics,
    check_metrics,
    flatten_metrics,
    merge_metrics,
    own_metrics,
)
from squash.runtime.protocol.requests import (
    AllocatorRequest,
    CoordinatorRequest,
    ProcessorRequest,
    Request,
)
from squash.runtime.protocol.responses import (
    RESPONSES,
    AllocatorResponse,
    CoordinatorResponse,
    Missing,
    ProcessorResponse,
    split_request,
)
from squash.runtime.protocol.wire import (
    MAX_BUDGET_MS,
    MAX_DIM,
    MAX_TIMEOUT,
    IndexRef,
    encode_event,
    pack_arrays,
    unpack_arrays,
    with_budget,
)

__all__ = [
    "COUNTERS",
    "MAX_BUDGET_MS",
    "MAX_COUNTERS",
    "MAX_DIM",
    "MAX_FUNCTIONS",
    "MAX_TIMEOUT",
    "RESPONSES",
    "ROLES",
    "AllocatorRequest",
    "AllocatorResponse",
    "CoordinatorRequest",
    "CoordinatorResponse",
    "IndexRef",
    "Metrics",
    "Missing",
    "ProcessorRequest",
    "ProcessorResponse",
    "Request",
    "check_metrics",
    "encode_event",
    "flatten_metrics",
    "merge_metrics",
    "own_metrics",
    "pack_arrays",
    "split_request",
    "unpack_arrays",
    "with_budget",
]
