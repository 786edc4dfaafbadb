"""Independent tasks of the world's stages run in parallel processes, with one progress line and an ETA.

Every task is a pure function of its arguments (a cell trains from a fixed base with a fixed seed and writes
its own folder), so *which* process runs it and in which order changes nothing in the results: each worker
process pins its torch intra-op threads (``world.threads``) and inherits the pinned CPU numerics of
:mod:`lpoi.numerics` from the stage's environment (spawned processes start from ``os.environ``, which the stage
set before torch was imported).

The ETA is measured, not guessed: tasks carry a relative ``cost`` (e.g. sequences trained plus items
answered), and the remaining time is the elapsed time scaled by the remaining share of the total cost.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Progress", "Task", "run_tasks"]


@dataclass(frozen=True)
class Task:
    name: str
    fn: Callable[..., Any]  # a module-level function (pickled by reference)
    args: tuple = ()
    cost: float = 1.0


@dataclass
class Progress:
    """Progress over a whole run made of several :func:`run_tasks` calls: ``total`` cost units, of which
    ``done`` are finished; one line per finished task (``[stage] 12/48 tune · 31% · 4m10s elapsed · ETA 9m``)."""

    total: float
    label: str = "world"
    log: Callable[[str], None] = print
    done: float = 0.0
    t0: float = field(default_factory=time.perf_counter)

    def add_total(self, cost: float) -> None:
        self.total += cost

    def finished(self, cost: float, what: str) -> None:
        self.done += cost
        elapsed = time.perf_counter() - self.t0
        share = self.done / self.total if self.total else 1.0
        eta = elapsed * (1 - share) / share if share > 0 else float("nan")
        self.log(f"[{self.label}] {what} · {100 * share:.0f}% · {_clock(elapsed)} elapsed · ETA {_clock(eta)}")


def _clock(seconds: float) -> str:
    if math.isnan(seconds):
        return "?"
    m, s = divmod(round(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_tasks(tasks: Sequence[Task], *, workers: int, threads: int, progress: Progress | None = None,
              phase: str = "") -> dict[str, Any]:
    """Run ``tasks`` (costliest first: the long ones do not end up alone at the tail) on ``workers`` processes;
    return ``{task.name: result}``. With one worker the tasks run in this process, in the same order. The
    first failing task cancels what has not started and re-raises its error once the running ones end."""
    order = sorted(tasks, key=lambda t: -t.cost)
    results: dict[str, Any] = {}
    n = len(order)

    def done(task: Task, i: int) -> None:
        if progress is not None:
            progress.finished(task.cost, f"{phase} {i}/{n} {task.name}".strip())

    if workers <= 1 or n <= 1:
        _init_worker(threads)
        for i, task in enumerate(order, 1):
            results[task.name] = task.fn(*task.args)
            done(task, i)
        return results
    with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        pending: dict[Future, Task] = {pool.submit(t.fn, *t.args): t for t in order}
        finished = 0
        try:
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in ready:
                    task = pending.pop(fut)
                    results[task.name] = fut.result()  # re-raises the task's error
                    finished += 1
                    done(task, finished)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return results
