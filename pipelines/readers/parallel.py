"""Planning work spread over Ray tasks, and over threads inside each (counting many files is I/O bound)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import ray

T = TypeVar("T")
R = TypeVar("R")

THREADS_PER_TASK = 16  # concurrent requests per task: a task mostly waits on object-store round trips


def map_in_tasks(
    fn: Callable[[T], R], items: Sequence[T], *, max_tasks: int | None = None, **remote_args: Any
) -> list[R]:
    """``[fn(x) for x in items]`` in parallel Ray tasks (items batched evenly), each running its items on
    ``THREADS_PER_TASK`` threads. ``max_tasks`` defaults to two per CPU of the cluster: more tasks than that
    only add scheduling overhead (one task per file cost ~40 ms each on a 2-CPU machine).

    A single item runs in the caller: planning one file needs no task.
    """
    if len(items) <= 1:
        return [fn(x) for x in items]
    if max_tasks is None:
        cpus = ray.cluster_resources().get("CPU", 1) if ray.is_initialized() else 1
        max_tasks = max(1, int(2 * cpus))
    per_task = -(-len(items) // max_tasks)
    batches = [list(items[i : i + per_task]) for i in range(0, len(items), per_task)]
    remote: Any = ray.remote(**({"num_cpus": 1} | remote_args))(_call_each)
    return [result for batch in ray.get([remote.remote(fn, b) for b in batches]) for result in batch]


def _call_each(fn: Callable[[T], R], items: list[T]) -> list[R]:
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(THREADS_PER_TASK, len(items))) as pool:
        return list(pool.map(fn, items))
