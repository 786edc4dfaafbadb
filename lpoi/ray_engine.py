"""``compute.engine: ray``: the per-sample runner's blocks computed by a pool of Ray actors.

The runner (:mod:`lpoi.runner`) stays the driver: it picks the pending blocks, and it writes every row,
reject and journal line itself, in input order. Only ``process(load(rows), rows)`` of a block runs on an
actor, so a block is computed exactly as the local runner computes it (same rows, same batch mates, same
pinned numerics: :data:`lpoi.numerics.ENV` is each actor's environment before torch loads), and the
outputs are byte-identical. Results come back in submission order while the pool computes ``2 x workers``
blocks ahead.

A dead actor (a SIGKILLed or crashed worker) is restarted and its block retried by Ray
(:data:`MAX_RETRIES` times); beyond that the stage ends in one line (:class:`lpoi.runner.EngineError`) and
a re-run resumes from the rows already written, as after any kill.

The stage's ``load``/``process`` (closures over the loaded model) are shipped to each actor once through
the object store. Actors import ``lpoi`` from this checkout (``PYTHONPATH``): a cluster joined through
``compute.address`` must see the repository, the models and ``data/`` at the same paths.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from lpoi import numerics

__all__ = ["MAX_RETRIES", "map_blocks"]

MAX_RETRIES = 3
"""Times Ray re-runs a block whose actor died (the actor is restarted each time)."""
REPO = Path(__file__).resolve().parents[1]


def _ray():
    try:
        import ray
    except ImportError:
        from lpoi.runner import EngineError

        raise EngineError('compute.engine is "ray" but Ray is not installed: pip install -e ".[ray]" '
                          "(or set compute.engine: local)") from None
    return ray


class _BlockWorker:
    """One actor: the stage's functions, under the pinned numerics."""

    def __init__(self, fns):
        numerics.pin()
        self.load, self.process = fns

    def ready(self) -> bool:
        return True

    def run(self, rows: list[dict]) -> list:
        return self.process(self.load(rows), rows)


def _start(ray, compute) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    env = {**numerics.ENV, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    kw: dict[str, Any] = {"runtime_env": {"env_vars": env}, "include_dashboard": False, "log_to_driver": True,
                          "configure_logging": False}
    if compute.address:
        kw["address"] = compute.address
    else:  # "local": a new Ray for this stage, never a cluster some `ray start` on this machine left running
        kw.update(address="local", num_cpus=compute.workers)  # one CPU per actor: exactly `workers` of them
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        from lpoi.runner import EngineError

        where = f"the Ray cluster at compute.address {compute.address!r}" if compute.address else "a local Ray"
        raise EngineError(f"could not start or join {where}: {(str(e).strip().splitlines() or [''])[0]}") from None
    return True


def map_blocks(load: Callable, process: Callable, blocks: Iterable[list[dict]], compute,
               desc: str = "") -> Iterator[tuple[list[dict], list]]:
    """``(rows, process(load(rows), rows))`` for each block of ``blocks``, in order, computed by
    ``compute.workers`` Ray actors. Stopping the iteration early (the runner's ``limit``) stops the pool."""
    from lpoi.runner import EngineError

    import sys
    import time

    ray = _ray()
    t0 = time.perf_counter()
    started = _start(ray, compute)
    try:
        gpus = compute.gpus_per_worker
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        actor = ray.remote(_BlockWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=-1,
                                                 max_task_retries=MAX_RETRIES)
        fns = ray.put((load, process))
        pool = [actor.remote(fns) for _ in range(compute.workers)]
        ray.get([a.ready.remote() for a in pool])
        print(f"[lpoi] {desc or 'stage'}: Ray ready in {time.perf_counter() - t0:.1f} s ({len(pool)} actors)",
              file=sys.stderr, flush=True)
        pending: deque = deque()  # (rows, ref), in input order; blocks go round-robin, two per actor ahead
        submitted = 0
        it = iter(blocks)
        while True:
            while len(pending) < 2 * len(pool):
                rows = next(it, None)
                if rows is None:
                    break
                pending.append((rows, pool[submitted % len(pool)].run.remote(rows)))
                submitted += 1
            if not pending:
                return
            rows, ref = pending.popleft()
            try:
                outcomes = ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the stage's own error: raised as the local runner would
                cause = getattr(e, "cause", None)
                raise (cause if isinstance(cause, BaseException) else e) from None
            except ray.exceptions.RayError as e:
                first = (str(e).strip().splitlines() or [""])[0]
                raise EngineError(f"{desc or 'stage'}: a Ray worker failed on the block starting at id "
                                  f"{rows[0].get('id')!r} after {MAX_RETRIES} retries ({type(e).__name__}: "
                                  f"{first[:200]}); re-run to resume") from None
            yield rows, outcomes
    finally:
        if started:
            ray.shutdown()
