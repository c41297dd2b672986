"""Retry policies shared by the stages: ``@dg.asset(retry_policy=FLAKY_RETRY, ...)``.

Step retries are for failures that a second try can fix (a busy warehouse lock, a preempted
GPU, a model server that is still starting). Deterministic errors (bad config, a missing data
root) fail the same way again, so stages that only do those get no policy. Out-of-memory is
handled inside the resource by shrinking the batch (fashion_pipeline.core.oom), not by
re-running the whole step at the same size.
"""

import dagster as dg

# Generic flaky I/O: 3 more tries at ~10 s, 20 s, 40 s (+/- jitter so parallel steps spread out).
FLAKY_RETRY = dg.RetryPolicy(max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)

# GPU stages: CUDA/driver hiccups, preempted nodes, a vLLM server still loading its weights.
# Fewer, longer-spaced tries: each one reloads a model.
GPU_RETRY = dg.RetryPolicy(max_retries=2, delay=60, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
