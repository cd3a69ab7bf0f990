"""Run one function over many task arguments: on driver threads, or as Ray tasks sharing large inputs.

The searches split their work into tasks (chunks of queries, ranges of inverted lists) that read the same
large arrays (the vectors, a serialised faiss index). Each task runs faiss on one thread (OpenMP's thread
count is a per-thread setting, so this changes nothing for the caller's thread) and the parallelism is
across tasks: faiss's many small block products are much faster single-threaded than with threads that
contend for the cores (measured: 5-15x on the development machine under load).

- In the driver the tasks run on a pool of ``threads`` threads (faiss releases the GIL), sharing the arrays.
- With Ray the shared arrays are put in the object store once, and every task reads them from there (numpy
  arrays zero-copy from shared memory, one copy per node). A ``shared`` list is emptied once its items are
  in the object store, so that the driver does not hold a second copy of them.

At most ``max_in_flight`` tasks are pending at a time and results are handed back as they finish, so the
driver holds a bounded number of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import faiss


def run_tasks(
    function: Callable[..., Any],
    shared: Sequence[Any],
    task_args: Iterable[tuple],
    *,
    use_ray: bool,
    threads: int = 1,
    max_in_flight: int = 8,
    cpus_per_task: float = 1.0,
) -> Iterator[Any]:
    """``function(*shared, *args)`` for each ``args`` of ``task_args``; results in completion order."""
    if use_ray:
        yield from _on_ray(function, shared, task_args, max_in_flight, cpus_per_task)
        return
    if threads <= 1:
        for args in task_args:
            yield single_threaded(function, *shared, *args)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: set[Future] = set()
        for args in task_args:
            if len(pending) >= max(max_in_flight, threads):
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
            pending.add(pool.submit(single_threaded, function, *shared, *args))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)


def single_threaded(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` with faiss on one OpenMP thread (this thread's setting, restored after)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return function(*args)
    finally:
        faiss.omp_set_num_threads(before)


def _on_ray(function, shared, task_args, max_in_flight: int, cpus_per_task: float) -> Iterator[Any]:
    import ray

    shared_refs = [ray.put(value) for value in shared]
    if isinstance(shared, list):
        shared.clear()
    remote = ray.remote(num_cpus=cpus_per_task, max_retries=3)(single_threaded)
    pending: list = []
    for args in task_args:
        if len(pending) >= max_in_flight:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
        pending.append(remote.remote(function, *shared_refs, *args))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def driver_threads() -> int:
    """Threads for tasks run in the driver: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


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
