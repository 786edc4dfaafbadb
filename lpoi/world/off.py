"""``world: none`` (the embedded default): the world's stages only record that there is no world.

DVC needs every declared output to exist after a stage runs, so each no-op writes a marker in its
folder and placeholders for its metrics, table and plot -- in milliseconds, without loading a model.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from lpoi.io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["MESSAGE", "record_off", "world_is_off"]

MESSAGE = "world: none -- the shapes world is off (dvc exp run -S world=shapes turns it on)"


def record_off(folder: str | os.PathLike | None = None, *, metrics: str | os.PathLike | None = None,
               text: str | os.PathLike | None = None,
               png: str | os.PathLike | list[str | os.PathLike] | None = None) -> None:
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(folder) / "NONE", MESSAGE + "\n")
    if metrics is not None:
        atomic_write_json(metrics, {})  # no numbers (a metrics file holds numbers only)
    if text is not None:
        atomic_write_text(text, MESSAGE + "\n")
    for path in [png] if isinstance(png, (str, os.PathLike)) else png or []:
        from PIL import Image, ImageDraw

        im = Image.new("RGB", (420, 40), (255, 255, 255))
        ImageDraw.Draw(im).text((8, 14), "world: none (dvc exp run -S world=shapes)", fill=(0, 0, 0))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
    print(MESSAGE)


def world_is_off(params, folder: str | os.PathLike | None = None, **outputs) -> bool:
    """True (after writing the placeholders, see :func:`record_off`) when ``world.name`` is ``none``."""
    if params.world.name != "none":
        return False
    record_off(folder, **outputs)
    return True
