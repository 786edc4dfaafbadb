"""A small shapes world written once per test session (a few dozen scenes)."""

import pytest

from lpoi.config import WorldParams


def small_world_params(**kw) -> WorldParams:
    return WorldParams(name="shapes", n_pretrain=kw.pop("n_pretrain", 24), n_pairs=kw.pop("n_pairs", 12),
                       n_val=kw.pop("n_val", 8), n_test=kw.pop("n_test", 10), **kw)


@pytest.fixture(scope="session")
def world_params():
    return small_world_params


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    from lpoi.world.dataset import build_world

    world = small_world_params()
    out = tmp_path_factory.mktemp("world") / "data"
    summary = build_world(world, out)
    return world, out, summary
