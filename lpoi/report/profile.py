"""Which profile a run used and which of its params differ from that profile's defaults.

``params.yaml`` is the Hydra composition of ``conf/`` (``dvc exp run -S model=idefics2-8b -S
train.beta=0.2`` rewrites it). From the file alone we recover the group choices — for each group
(``model``, ``data``, ``bench``) the option whose every value is found in the params, the most
specific one when several fit — then compose ``conf/`` with those choices and list the params that
differ: exactly the ``-S key=value`` changes, whatever profile they were made on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from lpoi.report.summary import flat as flatten

GROUPS = ("model", "data", "bench")
_MISSING = object()


def compose(conf_dir: str | os.PathLike, overrides: list[str] = ()) -> dict[str, Any]:
    """``conf/config.yaml`` composed by Hydra with ``overrides``, as plain data."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def _default_choices(conf_dir: Path) -> dict[str, str]:
    raw = yaml.safe_load((conf_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    choices = {}
    for entry in raw.get("defaults", []):
        if isinstance(entry, dict):
            choices.update({k: v for k, v in entry.items() if k in GROUPS})
    return choices


def group_choices(params: dict[str, Any], conf_dir: str | os.PathLike) -> dict[str, str]:
    """For each group, the option of ``conf/<group>/`` that fits ``params`` best: the most of its values
    found in the params minus those that differ (a ``-S`` change to a key the profile sets still
    leaves the profile recognisable); ties go to the default choice, then by name. The default when
    no option fits better than not at all."""
    conf_dir = Path(conf_dir)
    flat = flatten(params)
    defaults = _default_choices(conf_dir)
    choices = {}
    for group in GROUPS:
        fits = []
        for path in sorted((conf_dir / group).glob("*.yaml")):
            leaves = flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
            same = sum(flat.get(k, _MISSING) == v for k, v in leaves.items())
            fits.append((-(2 * same - len(leaves)), path.stem != defaults.get(group), path.stem))
        best = min(fits, default=None)
        choices[group] = best[2] if best is not None and best[0] < 0 else defaults.get(group)
    experiment = _experiment(flat, choices, conf_dir)
    if experiment:
        choices["experiment"] = experiment
    return {g: c for g, c in choices.items() if c is not None}


EXPERIMENT_SLACK = 3
"""Values of a preset that a run may change (``-S``) and still be recognised as that preset."""


def _experiment(flat: dict[str, Any], choices: dict[str, str], conf_dir: Path) -> str | None:
    """The ``conf/experiment/`` preset of this run: its model override is the run's model profile and at most
    :data:`EXPERIMENT_SLACK` of its own values differ (the most matching values win). None: no preset (the
    default ``experiment: none`` changes nothing, so it is never named)."""
    best = None
    for path in sorted((conf_dir / "experiment").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        overrides = {k.split("/", 1)[-1]: v for e in raw.pop("defaults", []) if isinstance(e, dict)
                     for k, v in e.items()}
        leaves = flatten(raw)
        if not leaves or overrides.get("model") != choices.get("model"):
            continue
        same = sum(flat.get(k, _MISSING) == v for k, v in leaves.items())
        if len(leaves) - same <= EXPERIMENT_SLACK and (best is None or same > best[0]):
            best = (same, path.stem)
    return best[1] if best else None


def changed_params(params: dict[str, Any], conf_dir: str | os.PathLike) -> tuple[dict[str, str], list[tuple]]:
    """``(choices, changes)``: the profile and ``[(key, profile default, this run), ...]`` sorted by key
    (a key the profile does not have: default ``None``; a key the run lacks: value ``None``)."""
    choices = group_choices(params, conf_dir)
    base = flatten(compose(conf_dir, [f"{g}={c}" for g, c in choices.items()]))
    run = flatten(params)
    changes = [(k, base.get(k), run.get(k)) for k in sorted(set(base) | set(run))
               if base.get(k, _MISSING) != run.get(k, _MISSING)]
    return choices, changes
