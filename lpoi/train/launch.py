"""The ``train`` stage on every GPU of a machine, from inside DVC: ``compute.train_processes`` > 1 makes the
stage re-launch itself under ``accelerate launch`` (``conf/accelerate/<compute.accelerate>.yaml``).

``dvc repro`` / ``dvc exp run -S compute.train_processes=4`` then trains with DDP or FSDP2 and ``dvc.lock``
records the setting (the train stage declares ``compute``). The launched processes run the same stage
script with :data:`LAUNCHED` set, so they train instead of launching again; each computes under the pinned
numerics (``stages/_common.py`` pins them before torch loads, and the launcher passes :data:`numerics.ENV`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lpoi import numerics
from lpoi.config import ComputeParams
from lpoi.stage import StageError

__all__ = ["LAUNCHED", "LaunchError", "accelerate_config", "launch_command", "relaunch", "should_launch"]

LAUNCHED = "LPOI_TRAIN_LAUNCHED"
"""Set in the environment of the processes :func:`relaunch` starts: they are the training ranks."""
CONF = Path(__file__).resolve().parents[2] / "conf" / "accelerate"


class LaunchError(StageError):
    """``accelerate launch`` could not start, or a training process failed (its own message is above)."""


def should_launch(compute: ComputeParams, environ=os.environ) -> bool:
    """True in the stage's own process when more than one training process is asked for; False in the
    launched ranks (and under a launcher the user started by hand: ``WORLD_SIZE`` is already set)."""
    return compute.train_processes > 1 and not environ.get(LAUNCHED) and "WORLD_SIZE" not in environ


def accelerate_config(compute: ComputeParams, path: str | os.PathLike | None = None) -> Path:
    """The accelerate config file: ``path`` (dvc.yaml passes ``conf/accelerate/${compute.accelerate}.yaml``,
    so DVC tracks the file and the choice), else the one ``compute.accelerate`` names."""
    path = Path(path) if path is not None else CONF / f"{compute.accelerate}.yaml"
    if not path.is_file():
        raise LaunchError(f"accelerate config {path} not found (compute.accelerate: ddp | fsdp, conf/accelerate/)")
    return path


def launch_command(compute: ComputeParams, config: str | os.PathLike | None, script: str | os.PathLike,
                   argv: list[str]) -> list[str]:
    """``accelerate launch`` of ``script argv`` in ``compute.train_processes`` processes on this machine."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config(compute, config)),
            "--num_processes", str(compute.train_processes), "--num_machines", "1", str(script), *argv]


def relaunch(compute: ComputeParams, config: str | os.PathLike | None, script: str | os.PathLike,
             argv: list[str]) -> None:
    """Run the stage's ``script argv`` under ``accelerate launch`` and wait; :class:`LaunchError` (one line)
    when it fails. The ranks print their own errors; a SIGINT/SIGTERM reaches them through the launcher."""
    cmd = launch_command(compute, config, script, argv)
    env = {**os.environ, **numerics.ENV, LAUNCHED: "1"}
    print(f"[lpoi] train: {compute.train_processes} processes: accelerate launch --config_file {cmd[4]}",
          file=sys.stderr, flush=True)
    try:
        code = subprocess.run(cmd, env=env).returncode
    except OSError as e:
        raise LaunchError(f"could not start accelerate launch ({e})") from None
    if code != 0:
        raise LaunchError(f"accelerate launch with compute.train_processes={compute.train_processes} "
                          f"({Path(cmd[4]).name}) failed with exit code {code} (the processes' errors are above)")
