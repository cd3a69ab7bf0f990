"""Planning work spread over Ray tasks (counting many files is I/O bound)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ray

T = TypeVar("T")
R = TypeVar("R")


def map_in_tasks(
    fn: Callable[[T], R], items: Sequence[T], *, max_tasks: int = 1000, **remote_args: Any
) -> list[R]:
    """``[fn(x) for x in items]`` in parallel Ray tasks (at most ``max_tasks``, items batched evenly).

    A single item runs in the caller: planning one file needs no task.
    """
    if len(items) <= 1:
        return [fn(x) for x in items]
    per_task = -(-len(items) // max_tasks)
    batches = [list(items[i : i + per_task]) for i in range(0, len(items), per_task)]
    remote = ray.remote(**({"num_cpus": 1} | remote_args))(_call_each)
    return [result for batch in ray.get([remote.remote(fn, b) for b in batches]) for result in batch]


def _call_each(fn: Callable[[T], R], items: list[T]) -> list[R]:
    return [fn(x) for x in items]
