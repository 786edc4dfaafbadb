"""Training curves in dvclive, re-created from the recipe's own per-step history on every start.

DVC deletes the stage's non-persisted plots folder before it re-runs a killed train stage, and a
stage run by hand may find a folder with rows past the checkpoint it resumes from. Neither is a
record to trust: the history saved inside each checkpoint is. So every run starts a fresh dvclive
folder and replays the checkpoint's rows into it before logging new ones -- the curves of a resumed
run equal those of an uninterrupted one, whichever way it was resumed.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["Curves"]


class Curves:
    """``log(row)`` one optimizer step's metrics (``row["step"]`` = 1-based step); ``end(summary)``."""

    def __init__(self, live_dir: str | Path, *, logging_steps: int, total_steps: int, history: list[dict]):
        from dvclive import Live

        self.live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None)  # resume=False: starts empty
        self.every, self.total = logging_steps, total_steps
        for row in history:
            self.log(row)

    def log(self, row: dict) -> None:
        step = row["step"]
        if step % self.every and step != self.total:
            return
        self.live.step = step
        for name, value in row.items():
            if name != "step":
                self.live.log_metric(name, value)
        self.live.next_step()

    def end(self, summary: dict) -> None:
        """Whole-run numbers (not plotted) in ``metrics.json``, then close."""
        for name, value in summary.items():
            self.live.log_metric(name, value, plot=False)
        self.live.end()
