"""A local Ray for the CLI that never outlives the command that started it.

``ray.init()`` without an address starts a local cluster (GCS, raylet, dashboard and runtime-env agents) as
children of the driver. A driver that exits normally shuts them down; a driver killed with SIGKILL cannot, and
they would stay. So when ``connect`` starts a local cluster it also starts a reaper: a small process that
waits for the driver to disappear and then ends every process of that cluster (the trees under the processes
``ray.init`` started).

    python -m jobs.local_ray DRIVER_PID ROOT_PID [ROOT_PID ...]     (the reaper; started by ``connect``)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import psutil

POLL_S = 0.5
GRACE_S = 3.0
"""How long an orphaned process has to end after SIGTERM before SIGKILL: a dead driver's cluster has nothing to
save (committed units are on storage), and Ray 2.60's dashboard and runtime-env agents, their raylet gone, were
still there 10 s after SIGTERM when measured."""


def connect(address: str | None, *, dashboard: bool = False, **init_kwargs: object) -> None:
    """``ray.init`` to ``address`` (a running cluster) or, when None or empty, a new local cluster that is
    reaped when this process ends, however it ends. A local cluster starts its dashboard only when asked
    (``dashboard``): it adds seconds to the start and a busy process beside a job on a small machine."""
    import ray

    if ray.is_initialized():
        return
    if not address:
        init_kwargs["include_dashboard"] = dashboard
    before = {p.pid for p in psutil.Process().children()}
    ray.init(address=address or None, ignore_reinit_error=True, **init_kwargs)  # type: ignore[arg-type]
    started = [p.pid for p in psutil.Process().children() if p.pid not in before]
    if not address and started:
        subprocess.Popen(  # noqa: S603 - our own module, our own pids
            [sys.executable, "-m", "jobs.local_ray", str(os.getpid()), *map(str, started)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the driver's process group does not reach the reaper
        )


def reap(driver: int, roots: list[int], poll_s: float = POLL_S, grace_s: float = GRACE_S) -> None:
    """Wait until ``driver`` is gone, then end the process trees under ``roots`` (TERM, then KILL after
    ``grace_s``).

    The trees are noted at every poll, so a process whose parent died first (an agent of a raylet that
    noticed the driver's end) is still known and ended."""
    known = {p.pid: p for p in (_process(pid) for pid in roots) if p is not None}
    while _process(driver) is not None:
        _note_descendants(known)
        time.sleep(poll_s)
    _note_descendants(known)
    doomed = [p for p in known.values() if p.is_running()]
    for proc in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(doomed, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def _note_descendants(known: dict[int, psutil.Process]) -> None:
    for proc in list(known.values()):
        try:
            for child in proc.children(recursive=True):
                known.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            continue


def _process(pid: int) -> psutil.Process | None:
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc
    except psutil.NoSuchProcess:
        return None


if __name__ == "__main__":
    reap(int(sys.argv[1]), [int(pid) for pid in sys.argv[2:]])
