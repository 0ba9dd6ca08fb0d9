"""The serverless runtime: coordinator, allocator and processor bodies (design/algorithm.md 5.1-5.5), their wire
protocol, the allocator tree, the warm-container cache (DRE), and the in-process invoker.

- The coordinator pins the index version, validates the batch once (dimensions, filters, knobs), chooses
  the allocator tree within the functions' reserved concurrency (`squash.runtime.concurrency`) and starts it; at
  depth 0 it does an allocator's work itself.
- An allocator first starts its children (each gets its subtree's slice of the batch), then plans its own
  share with `plan_queries` (single-pass rule), calls one processor per partition concurrently, merges the
  partial top-k, and finally joins its children.
- A processor searches one partition, kept warm in its container's `HandlerContext` (DRE). Partition p
  always goes to processor slot p % S (`RuntimeConfig.processor_for`), so a warm slot holds its partitions.

Results come back up in the responses with per-function metrics (timings, invocations, cold/warm, cache
hits, storage requests and bytes).

Fault handling (`squash.compute.retry`): every node retries its own failed invocations and storage reads
on transient errors with jittered backoff, within its retry budget, and never an error its callee raised
after its own retries; processor stragglers are hedged. Every level stops at its own deadline: its
request's ``budget_ms`` from its arrival, and on Lambda no later than the end of its time limit. A partition
that still cannot be searched marks its queries incomplete and is named in the response's ``missing``;
the client raises `IncompleteResultError` unless asked for partial results, so results are never silently
partial.

Every mode dispatches an event the same way (`squash.runtime.dispatch.handle`): the Lambda apps through
`squash.runtime.lambda_app`, the embedded mode through `squash.runtime.inprocess.InProcessInvoker`.
"""
