"""Check every Hydra composition of this repository's ``conf/`` with lpoi's own parameter rules.

``dvc exp run -S key=value`` composes ``conf/`` with Hydra and rewrites ``params.yaml`` before any
stage runs. Left alone, Hydra answers a misspelt key (``-S train.betaa=1``) with "Could not override
'train.betaa'. To append to your config use +train.betaa=1" — advice that, followed, only moves the
failure into the first stage. DVC loads Hydra plugins from the repository root (its
``hydra.plugins_path`` setting, default: the root), so this module is imported by every ``dvc exp
run`` here. It wraps Hydra's ``compose_config`` so that a composition of *this* ``conf/`` is validated
by :func:`lpoi.config.validate` — an unknown key, a wrong type or an out-of-range value stops the
experiment at once with the project's message naming the key (and the closest known key), and an unknown
profile (``-S model=nope``) with the list of profiles.

It also says which values of the current ``params.yaml`` the new composition replaces (a hand edit,
or the previous experiment's ``-S``): ``dvc exp run`` always starts again from ``conf/``, so a hand
edit of ``params.yaml`` would otherwise be lost without a word.

Compositions of any other config folder are left untouched. If a Hydra release renames the private
hook, nothing is patched and Hydra's own message comes back (``tests/test_cli.py`` notices).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def _config_module():
    """``lpoi/config.py`` of this checkout (not whichever ``lpoi`` is installed), loaded by path."""
    name = "_lpoi_config_for_hydra"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "lpoi" / "config.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # pydantic resolves the models' annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def _error(message: str) -> Exception:
    try:  # DVC prints its own exceptions as one "ERROR: ..." line, others as "unexpected error"
        from dvc.exceptions import DvcException

        return DvcException(message)
    except ImportError:
        from hydra.errors import ConfigCompositionException

        return ConfigCompositionException(message)


def _is_ours(hydra) -> bool:
    for element in hydra.config_loader.get_search_path().get_path():
        path = str(element.path or "")
        if path.startswith(("pkg://", "structured://")):
            continue
        if Path(path.removeprefix("file://")).resolve() == CONF.resolve():
            return True
    return False


def _forced(override: str) -> str:
    """``key=value`` → ``++key=value`` (add or override), so the composition shows what was asked."""
    key = override.split("=", 1)[0]
    if override.startswith(("+", "~")) or "=" not in override or (CONF / key).is_dir():
        return override  # already an add/delete, or a group choice (model=..., data=...)
    return "++" + override


def _check_profiles(overrides: list[str]) -> None:
    """``model=nope``: one line naming the choice and the profiles there are (Hydra's answer is an "unexpected
    error" listing its config search path)."""
    for override in overrides:
        key, eq, value = override.lstrip("+~").partition("=")
        group = CONF / key
        if eq and value != "null" and group.is_dir() and not (group / f"{value}.yaml").is_file():
            names = sorted(p.stem for p in group.glob("*.yaml"))
            raise _error(f"{key}={value} is not a profile; profiles: {', '.join(names)} (conf/{key}/; the experiment "
                         "did not start)")


def _check(cfg, overrides: list[str]) -> None:
    from omegaconf import OmegaConf, open_dict

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)  # Hydra's own node (not resolvable outside a run)
    data = OmegaConf.to_container(cfg, resolve=True)
    config = _config_module()
    try:
        config.validate(data)
    except config.ParamsError as e:
        shown = " ".join(f"-S {o}" for o in overrides)
        raise _error(f"{e}\n(from {shown}; every parameter is listed in conf/config.yaml and documented in "
                     "lpoi/config.py; the experiment did not start)") from None
    _warn_replaced(data, overrides)


def _flat(d, prefix=""):
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _warn_replaced(data: dict, overrides: list[str]) -> None:
    """Under ``dvc exp run``: name the values of the current params.yaml that the new composition drops."""
    import yaml

    if Path(sys.argv[0]).name != "dvc" or not (REPO / "params.yaml").is_file():
        return  # only DVC writes the composition over params.yaml
    try:
        old = _flat(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8")) or {})
    except (OSError, yaml.YAMLError):
        return
    new = _flat(data)
    asked = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    lost = [f"{k}: {old[k]!r} -> {new.get(k)!r}" for k in sorted(old)
            if old[k] != new.get(k) and k not in asked and k.split(".", 1)[0] not in asked]
    if lost:
        shown = "; ".join(lost[:6]) + (f"; ... ({len(lost)} in all)" if len(lost) > 6 else "")
        print(f"lpoi: params.yaml is rebuilt from conf/ plus your -S options; these values of the current "
              f"params.yaml are replaced: {shown}. To keep one, pass it with -S or set it in conf/.",
              file=sys.stderr)


def _install() -> None:
    try:
        from hydra._internal.hydra import Hydra
        from hydra.errors import ConfigCompositionException
    except ImportError:
        return
    original = Hydra.compose_config
    if getattr(original, "_lpoi_checked", False):  # Hydra's scanner may execute this module twice
        return

    def compose_config(self, config_name, overrides, *args, **kwargs):
        if not _is_ours(self):
            return original(self, config_name, overrides, *args, **kwargs)
        _check_profiles(list(overrides))
        try:
            cfg = original(self, config_name, overrides, *args, **kwargs)
        except ConfigCompositionException as hydra_error:
            try:
                forced = original(self, config_name, [_forced(o) for o in overrides], *args, **kwargs)
            except Exception:  # noqa: BLE001 - not a key problem (e.g. an unknown group option): Hydra's message
                raise hydra_error from None
            _check(forced, list(overrides))  # raises the project's message (the forced keys are unknown)
            raise
        _check(cfg, list(overrides))
        return cfg

    compose_config._lpoi_checked = True
    Hydra.compose_config = compose_config


_install()
