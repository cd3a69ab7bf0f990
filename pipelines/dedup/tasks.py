"""Run one function over many task arguments, in the driver or as Ray tasks sharing large inputs.

The searches split their work into tasks (chunks of queries, ranges of inverted lists) that read the same
large arrays (the vectors, a serialised faiss index). In the driver the tasks run one after the other. With
Ray the shared arrays are put in the object store once, and every task reads them from there (numpy arrays
zero-copy from shared memory, one copy per node); at most ``max_in_flight`` tasks are submitted at a time
and results are handed back as they finish, so the driver holds a bounded number of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any


def run_tasks(
    function: Callable[..., Any],
    shared: Sequence[Any],
    task_args: Iterable[tuple],
    *,
    use_ray: bool,
    max_in_flight: int = 8,
    cpus_per_task: float = 1.0,
) -> Iterator[Any]:
    """``function(*shared, *args)`` for each ``args`` of ``task_args``; results in completion order."""
    if not use_ray:
        for args in task_args:
            yield function(*shared, *args)
        return
    import ray

    shared_refs = [ray.put(value) for value in shared]
    remote = ray.remote(num_cpus=cpus_per_task, max_retries=3)(function)
    pending: list = []
    for args in task_args:
        if len(pending) >= max_in_flight:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
        pending.append(remote.remote(*shared_refs, *args))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def ray_cpus() -> int:
    """CPUs of the running Ray cluster (at least 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def ray_running() -> bool:
    """Whether this process is connected to Ray (the dedup code never starts it)."""
    try:
        import ray
    except ImportError:  # pragma: no cover - Ray is a dependency
        return False
    return ray.is_initialized()
