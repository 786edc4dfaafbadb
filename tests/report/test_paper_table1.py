"""``lpoi/report/paper_table1.json`` is the paper's Table 1 as transcribed in the project's spec
(``shared/paper/TABLE1.md``): every row and value, parsed here from the Markdown independently."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODELS = {"LLaVA-v1.5-7B": "llava-hf/llava-1.5-7b-hf", "LLaVA-v1.5-13B": "llava-hf/llava-1.5-13b-hf",
          "Idefics2-8B": "HuggingFaceM4/idefics2-8b"}
HEADERS = {"ObjHal CHAIRs ↓": "objhal.CHAIRs", "ObjHal CHAIRi ↓": "objhal.CHAIRi", "MMHal score ↑": "mmhal.score",
           "MMHal hal. rate ↓": "mmhal.hallucination_rate", "AMBER CHAIR ↓": "amber.CHAIR",
           "AMBER Cover ↑": "amber.Cover", "AMBER Hal ↓": "amber.Hal", "AMBER Cog ↓": "amber.Cog"}


def _spec() -> Path:
    for parent in REPO.parents:  # the shared folder sits beside the checkout (../shared, or ../../shared)
        path = parent / "shared" / "paper" / "TABLE1.md"
        if path.is_file():
            return path
    pytest.skip("shared/paper/TABLE1.md is not beside this checkout")


def _parse(md: str) -> dict:
    """{model: {method: {key: value or None}}} from the Markdown table."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    keys = [HEADERS[h] for h in header]
    out, model = {}, None
    for ln in lines[2:]:
        name, *cells = (c.strip() for c in ln.strip().strip("|").split("|"))
        if name.startswith("+ "):
            method = name[2:].lower()
        else:
            model, method = MODELS[name], "base"
        out.setdefault(model, {})[method] = {k: None if c == "-" else float(c) for k, c in zip(keys, cells, strict=True)}
    return out


def test_paper_table1_json_equals_the_spec():
    table = json.loads((REPO / "lpoi/report/paper_table1.json").read_text(encoding="utf-8"))
    spec = _parse(_spec().read_text(encoding="utf-8"))
    assert sum(len(m) for m in spec.values()) == 15  # base, DPO, mDPO, LPOI and three more baselines
    assert table["rows"] == spec
    assert table["transcribed"] is True and "Table 1" in table["source"]
    assert set(table["columns"]) == set(HEADERS.values())
