"""``lists.source: official``: the LPOI authors' released lists, laid out as their README unzips them, become a
lists manifest that meets the contract; every list image is pixel-identical to the file it came from, and
every missing, undecodable or mis-sized file is a reject with its reason.

The folder is synthetic (drawn PNG/JPEG files) in the official layout:
``sample_10k_llava.json``, ``images/<img_path>``, ``ours_cmask_until_list5/ours_cmask_until{25,50,75,100}/...``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lpoi.io import write_jsonl
from lpoi.listgen.official import LEVELS, run_official_lists
from lpoi.listgen.prepare import prepare_records


def _scene(seed: int, hidden: float = 0.0, size=(40, 30)) -> Image.Image:
    """A random-coloured picture with its left ``hidden`` share of a 20x12 box blacked out (as the release)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(30, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[8:20, 10:10 + int(round(20 * hidden))] = 0
    return Image.fromarray(arr)


def _official_folder(root: Path) -> Path:
    """Six samples: a, b, c resolve (three img_path forms), d misses its 75 % image, e has an undecodable 50 %
    image, f has a 100 % image of another size."""
    (root / "images" / "sub").mkdir(parents=True)
    forms = {"a": "data/images/a.jpg", "b": "images/sub/b.png", "c": "c.png", "d": "d.png", "e": "e.png", "f": "f.png"}
    pairs = []
    for i, (name, img_path) in enumerate(forms.items()):
        rel = img_path.split("images/", 1)[-1]  # where the file sits under images/
        fmt = "JPEG" if rel.endswith(".jpg") else "PNG"
        _scene(i).save(root / "images" / rel, fmt, quality=95)
        pairs.append({"img_path": img_path, "prompt": f"What is in picture {name}?", "chosen": "A box.",
                      "rejected": "A cat."})
        for k, pct in enumerate(LEVELS, start=1):
            level = root / "ours_cmask_until_list5" / f"ours_cmask_until{pct}"
            # a and c as lpoi.py maps them (the images/ root removed); b under its full img_path
            target = level / (img_path if name == "b" else rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            if name == "d" and pct == 75:
                continue
            if name == "e" and pct == 50:
                target.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
                continue
            img = _scene(i, hidden=k / 4, size=(41, 30) if name == "f" and pct == 100 else (40, 30))
            img.save(target, fmt, quality=95)
    (root / "sample_10k_llava.json").write_text(json.dumps(pairs))
    return root


@pytest.fixture
def official(tmp_path):
    root = _official_folder(tmp_path / "lpoi-official")
    rows = [r for kind, r in prepare_records(root / "sample_10k_llava.json", root / "images") if kind == "ok"]
    assert len(rows) == 6  # all three img_path forms resolve under images/
    write_jsonl(tmp_path / "prepared.jsonl", rows)
    return root, tmp_path / "prepared.jsonl", {r["image"]: r for r in rows}


def _pixels(path: Path) -> bytes:
    with Image.open(path) as im:
        return im.convert("RGB").tobytes()


def test_released_lists_become_a_manifest_that_meets_the_contract(official, tmp_path):
    root, prepared, by_image = official
    out = tmp_path / "lists"
    metrics = run_official_lists(prepared, root / "ours_cmask_until_list5", out)
    rows = [json.loads(x) for x in (out / "lists.jsonl").read_text().splitlines()]
    rejects = {r["id"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    prepared_rows = {r["id"]: r for r in by_image.values()}
    names = {rid: Path(r["image"]).stem for rid, r in prepared_rows.items()}
    assert sorted(names[r["id"]] for r in rows) == ["a", "b", "c"]
    assert {names[i]: r["reason"] for i, r in rejects.items()} == {
        "d": "missing_list_image", "e": "undecodable_list_image", "f": "list_size_mismatch"}
    assert "ours_cmask_until75" in rejects[next(i for i in rejects if names[i] == "d")]["detail"]
    assert metrics["lists"] == 3 and metrics["rejected"] == 3 and metrics["size"] == 5
    for r in rows:
        assert {"id", "prompt", "chosen", "rejected", "images", "visibility", "object", "verified"} <= r.keys()
        assert r["visibility"] == [1.0, 0.75, 0.5, 0.25, 0.0]
        assert {"phrase", "source", "box", "score", "mask", "mask_area"} <= r["object"].keys()
        # the 20x12 box of a 40x30 picture is hidden: 0.2 of it (less the pixels that were already dark)
        assert r["object"]["source"] == "official" and 0.15 < r["object"]["mask_area"] <= 0.2
        p = prepared_rows[r["id"]]
        rel = p["image"].split("images/", 1)[-1]
        sources = [Path(p["image_path"])] + [
            root / "ours_cmask_until_list5" / f"ours_cmask_until{pct}" / (p["image"] if names[r["id"]] == "b" else rel)
            for pct in LEVELS]
        for img, src in zip(r["images"], sources, strict=True):
            assert _pixels(out / img) == _pixels(src)  # pixel-identical to the file it came from
            assert (out / img).read_bytes() == src.read_bytes()
        assert _pixels(out / r["images"][1]) != _pixels(out / r["images"][0])  # the object really goes


def test_the_release_has_five_images_per_list_and_all_four_folders(official, tmp_path):
    root, prepared, _ = official
    with pytest.raises(ValueError, match="lists.size is 4"):
        run_official_lists(prepared, root / "ours_cmask_until_list5", tmp_path / "o", size=4)
    with pytest.raises(FileNotFoundError, match="ours_cmask_until25"):
        run_official_lists(prepared, tmp_path / "nowhere", tmp_path / "o")


def test_no_list_at_all_is_a_one_line_error(official, tmp_path):
    root, prepared, _ = official
    lists = root / "ours_cmask_until_list5"
    for p in (lists / "ours_cmask_until100").rglob("*"):
        if p.is_file():
            p.unlink()
    with pytest.raises(ValueError, match="no list could be built.*missing_list_image"):
        run_official_lists(prepared, lists, tmp_path / "o")


def test_official_source_needs_the_released_folder_under_the_data_folder():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from lpoi.config import ParamsError, validate

    def _compose(*overrides):
        conf = Path(__file__).resolve().parents[2] / "conf"
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            return OmegaConf.to_container(compose(config_name="config", overrides=list(overrides)), resolve=True)

    p = validate(_compose("data=lpoi-official"))
    assert (p.lists.source, p.data.lists) == ("official", "data/external/lpoi-official/ours_cmask_until_list5")
    raw = _compose()
    raw["lists"]["source"] = "official"
    with pytest.raises(ParamsError, match=r"^invalid parameters:\nlists.source is 'official' but data.lists names "
                                          r"no folder \(use -S data=lpoi-official\)$"):
        validate(raw)
    raw = _compose("data=lpoi-official")
    raw["data"]["lists"] = "/elsewhere"
    with pytest.raises(ParamsError, match="data.lists must lie under data/external/lpoi-official/"):
        validate(raw)
