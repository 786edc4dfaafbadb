"""The report stage: metrics/summary.json (few numeric keys, values from the score/train/list files),
REPORT.md's table against it, honest labels, the profile diff, the paper row, and the figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lpoi.config import validate
from lpoi.report import figures
from lpoi.report.build import ReportPaths, build_report, paper_row
from lpoi.labels import RANDOM_MODEL_KEY, label, random_models
from lpoi.report.markdown import ReportInputs, render, table_mismatches, table_values
from lpoi.report.profile import changed_params, compose
from lpoi.report.summary import ROWS, build_summary, flat
from headtree import committed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"

AMBER = {"generative": {"CHAIR": 91.7, "Cover": 3.1, "Hal": 83.3, "Cog": 0.0},
         "discriminative": {"overall": {"Accuracy": 50.0, "Precision": 100.0, "Recall": 16.7, "F1": 28.6},
                            "existence": {"Accuracy": 25.0, "Precision": 99.9, "Recall": 25.0, "F1": 40.0}},
         "amber_score": 18.45, "similarity": "exact", "n_unparsed": 2, "n_discriminative": 20,
         "n_generation_errors": 1, "generation_errors": {"missing": 1}}
OBJHAL = {"CHAIRs": 60.0, "CHAIRi": 81.81818181818181, "n_generation_errors": 0, "n_extract_errors": 0}
MMHAL = {"score": 2.375, "hallucination_rate": 0.625, "n": 8, "n_judge_errors": 2, "judge_errors": {"timeout": 2},
         "n_rating_unparsed": 1, "n_generation_errors": 0, "judge": "hf:tiny/llama", "judge_date": None}
TRAIN = {"loss": 6.116515159606934, "ranking_accuracy": 0.75, "margin": 0.01920325681567192, "samples_per_s": 36.7,
         "train_seconds": 2.55}
LISTGEN = {"records_in": 26, "records_out": 24, "rejects": {"duplicate_record": 1, "unsafe_path": 1}, "rejects_total": 2,
           "lists_out": 24, "detection_rate": 1.0, "sam_mask_rate": 0.958333, "verify_pass_rate": None}
SOURCES = {"amber": AMBER, "objhal": OBJHAL, "mmhal": MMHAL, "train": TRAIN, "listgen": LISTGEN}


def _params(**sections):
    raw = yaml.safe_load(committed("params.yaml").read_text())
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return validate(raw)


# ------------------------------------------------------------------------------------------ summary


def test_summary_is_few_numeric_keys_taken_from_the_sources():
    """Values as in the files (rounded to the paper's precision), the two error totals summed over the
    benchmarks (1 generation error in AMBER; 2 MMHal judge errors), reject rate 2/26, timings left out."""
    s = build_summary(SOURCES, random_model=True)
    values = flat(s)
    assert len(values) <= 25 and len(values) == len(ROWS) + 1
    assert all(v is None or (isinstance(v, (int, float))) for v in values.values())  # bool is an int: the label
    assert values[RANDOM_MODEL_KEY] is True
    assert values["amber.CHAIR"] == 91.7 and values["amber.F1"] == 28.6 and values["amber.score"] == 18.45
    assert values["amber.Accuracy"] == 50.0
    assert values["objhal.CHAIRi"] == 81.8 and values["objhal.CHAIRs"] == 60.0
    assert values["mmhal.score"] == 2.38 and values["mmhal.hallucination_rate"] == 0.62  # round-half-even of .625
    assert values["train.loss"] == 6.1165 and values["train.ranking_accuracy"] == 0.75 and values["train.margin"] == 0.0192
    assert values["lists.lists"] == 24 and values["lists.reject_rate"] == round(2 / 26, 3)
    assert values["lists.verify_pass_rate"] is None  # not a made-up 0
    assert values["errors.generation"] == 1 and values["errors.judge"] == 2
    assert not any(re.search(r"second|per_s|path|sha|hash", k) for k in values)
    empty = flat(build_summary({}, random_model=False))
    assert empty[RANDOM_MODEL_KEY] is False and empty["amber.CHAIR"] is None and empty["errors.generation"] == 0


def test_random_model_label():
    p = _params()
    assert random_models(p) == ["model", "detect", "segment", "verify", "judge"]
    assert label(p, ("vlm",)) == {RANDOM_MODEL_KEY: True}
    real = _params(model={"name": "HuggingFaceM4/idefics2-8b"}, detect={"model": "IDEA-Research/grounding-dino-tiny"},
                   segment={"model": "facebook/sam-vit-base"},
                   judge={"backend": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "gpt-4"})
    assert random_models(real) == [] and label(real) == {RANDOM_MODEL_KEY: False}
    mixed = _params(model={"name": "HuggingFaceM4/idefics2-8b"})  # real VLM, lists from the tiny detector
    assert label(mixed, ("vlm",)) == {RANDOM_MODEL_KEY: False} and label(mixed) == {RANDOM_MODEL_KEY: True}


# ------------------------------------------------------------------------------------------ REPORT.md


def _inputs(**kw) -> ReportInputs:
    base = dict(summary=build_summary(SOURCES, True), sources=SOURCES, choices={"model": "tiny-idefics2"},
                changes=[("train.beta", 0.1, 0.2)], models={"model": "tiny/idefics2"}, random_roles=["model"],
                method="lpoi", yes_no="first-word")
    return ReportInputs(**{**base, **kw})


def assert_table_matches_summary(page: str, summary: dict) -> None:
    """Every ROWS entry appears once in the table with the summary's value at its precision."""
    assert table_mismatches(page, summary) == []
    cells, values = table_values(page), flat(summary)
    for row in ROWS:
        v = values[row.key]
        if v is not None:
            shown = cells[f"{row.name} {row.better}".strip()]
            if row.unit == "%":  # a rate shown as a percentage with one decimal
                assert shown.endswith(" %") and float(shown[:-2]) == pytest.approx(100 * v, abs=0.05)
            else:
                assert float(shown) == pytest.approx(v, abs=10 ** -row.digits / 2)


def test_report_table_matches_the_summary_and_warns():
    page = render(_inputs())
    assert_table_matches_summary(page, build_summary(SOURCES, True))
    wrong = build_summary(SOURCES, True)
    wrong["amber"]["CHAIR"] = 12.3  # the check can fail
    assert table_mismatches(page, wrong) == ["amber.CHAIR: table '91.7', summary '12.3'"]
    assert "**Tiny random models** (model)" in page
    assert "`train.beta`: 0.1 → 0.2" in page
    assert "AMBER: 1 answer(s) not generated" in page and "the judge failed on 2 item(s)" in page
    assert "2 of 20 yes/no answers are not exactly Yes/No" in page and "amber.yes_no: first-word" in page
    assert "spaCy en_core_web_lg is not installed" in page
    assert "`hf:tiny/llama` (local model, no request sent)" in page
    assert len(page.splitlines()) < 70  # one screen


def test_report_names_every_judge_extractor_and_amber_rule():
    """The Judge section says who scored what: the LLM extractor's label, or that rules extracted the objects;
    AMBER's noun matching and yes/no rule (the authors': spaCy en_core_web_lg, the paper substring rule)."""
    llm = {**OBJHAL, "extractor": "llm", "judge": "openai-compatible:gpt-3.5-turbo-0613@http://127.0.0.1:9/v1",
           "judge_date": "2026-12-06"}
    amber = {**AMBER, "similarity": "spacy-lg"}
    page = render(_inputs(sources={**SOURCES, "objhal": llm, "amber": amber}, yes_no="paper"))
    judge = page.split("## Judge", 1)[1].split("## Warnings", 1)[0]
    assert "Object HalBench objects: `openai-compatible:gpt-3.5-turbo-0613@http://127.0.0.1:9/v1` (2026-12-06)" in judge
    assert "AMBER: spaCy en_core_web_lg similarity, generated yes/no replies stored under amber.yes_no: paper" in judge
    rules = render(_inputs(sources={**SOURCES, "objhal": {**OBJHAL, "extractor": "rules"}}))
    assert "Object HalBench objects: rule-based extraction (objhal.extractor: rules, no LLM)" in rules
    assert "AMBER: exact noun matching" in rules
    logits = render(_inputs(discriminative="logits"))
    assert "AMBER: exact noun matching, yes/no by Yes vs No next-token logits" in logits


def test_paper_column_only_for_real_paper_models_on_full_benchmarks(tmp_path):
    table = json.loads((REPO / "lpoi/report/paper_table1.json").read_text())
    assert set(table["rows"]) == {"HuggingFaceM4/idefics2-8b", "llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"}
    assert paper_row(_params()) == (None, None)  # tiny model: no paper row, no note
    ide = {"model": {"name": "HuggingFaceM4/idefics2-8b"}}
    real_judge = {"backend": "openai", "model": "gpt-4-0314", "base_url": "http://127.0.0.1:9/v1"}
    row, note = paper_row(_params(**ide, judge=real_judge))
    assert row is None and "bench=mini" in note
    # a real model judged by the tiny random judge: random MMHal numbers never stand beside the paper's
    assert paper_row(_params(**ide, bench={"name": "full"})) == (None, None)
    row, note = paper_row(_params(**ide, bench={"name": "full"}, judge=real_judge))
    assert row["amber.CHAIR"] == 2.6 and row["mmhal.score"] == 2.88 and "Table 1" in note  # the LPOI row
    row, _ = paper_row(_params(**ide, bench={"name": "full"}, judge=real_judge, generate={"use_adapter": False}))
    assert row["amber.CHAIR"] == 3.4  # the base model's row
    page = render(_inputs(paper={"amber.CHAIR": 4.3}, paper_note=note))
    line = next(x for x in page.splitlines() if "| CHAIR ↓ |" in x)
    assert line.strip().endswith("| 91.7 | 4.3 | +87.4 |") and "paper (Table 1) | Δ" in page


# ------------------------------------------------------------------------------------------ profile diff


@pytest.mark.parametrize(("overrides", "choices", "changes"), [
    ([], {"model": "tiny-idefics2", "data": "sample", "bench": "mini"}, []),
    (["train.beta=0.2"], {"model": "tiny-idefics2"}, [("train.beta", 0.1, 0.2)]),
    (["model=idefics2-8b", "data=mdpo-10k", "bench=full", "train.beta=0.2"],
     {"model": "idefics2-8b", "data": "mdpo-10k", "bench": "full"}, [("train.beta", 0.1, 0.2)]),
    (["experiment=paper-llava-1.5-7b", "train.beta=0.2"],  # a paper preset: only the -S change is listed
     {"model": "llava-1.5-7b", "data": "mdpo-10k", "bench": "full", "experiment": "paper-llava-1.5-7b"},
     [("train.beta", 0.1, 0.2)]),
    (["experiment=paper-idefics2-8b", "data=lpoi-official"],  # the released lists under the paper preset
     {"model": "idefics2-8b", "data": "lpoi-official", "experiment": "paper-idefics2-8b"}, []),
    (["experiment=paper-llava-1.5-13b"], {"model": "llava-1.5-13b", "experiment": "paper-llava-1.5-13b"}, []),
    (["model=llava-1.5-7b", "train.epochs=3", "bench.amber.limit=3"], {"model": "llava-1.5-7b"},
     [("bench.amber.limit", None, 3), ("train.epochs", 1, 3)]),
])
def test_changed_params_are_the_exp_run_settings(overrides, choices, changes):
    got_choices, got_changes = changed_params(compose(CONF, overrides), CONF)
    assert choices.items() <= got_choices.items()
    assert got_changes == changes


# ------------------------------------------------------------------------------------------ figures


def _tsv(folder: Path, name: str, values: list[float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.tsv").write_text(f"step\t{name}\n" + "".join(f"{i + 1}\t{v}\n" for i, v in enumerate(values)))


def test_figures_read_dvclive_curves_and_are_deterministic(tmp_path):
    plots = tmp_path / "plots" / "metrics"
    for name, base in (("loss", 3.0), ("loss_dpo", 0.7), ("loss_list", 2.0), ("loss_anchor", 0.3)):
        _tsv(plots, name, [base - 0.01 * i for i in range(10)])
    for k in range(5):
        _tsv(plots, f"reward_{k}", [0.01 * i * (4 - k) for i in range(10)])
    _tsv(plots, "reward_rejected", [-0.01 * i for i in range(10)])
    (plots / "empty.tsv").write_text("step\tempty\n")
    curves = figures.read_curves(plots)
    assert "empty" not in curves and curves["loss"][0] == (1.0, 3.0) and len(curves["reward_4"]) == 10
    outs = {}
    for name, draw in (("loss", lambda p: figures.training_losses(curves, p)),
                       ("rewards", lambda p: figures.reward_positions(curves, p, [1.0, 0.75, 0.5, 0.25, 0.0])),
                       ("amber", lambda p: figures.amber_breakdown(AMBER, p)),
                       ("nothing", lambda p: figures.reward_positions({}, p))):
        draw(tmp_path / f"{name}.png")
        draw(tmp_path / f"{name}2.png")
        assert (tmp_path / f"{name}.png").read_bytes() == (tmp_path / f"{name}2.png").read_bytes(), name
        with Image.open(tmp_path / f"{name}.png") as im:
            outs[name] = np.asarray(im.convert("RGB"))
    # five reward curves in five colours (viridis) + the dashed red rejected one: many distinct colours
    assert len(np.unique(outs["rewards"].reshape(-1, 3), axis=0)) > len(np.unique(outs["nothing"].reshape(-1, 3), axis=0))
    assert figures.read_curves(tmp_path / "missing") == {}


# ------------------------------------------------------------------------------------------ the stage, end to end


def _listgen_dirs(root: Path) -> dict[str, Path]:
    dirs = {s: root / s for s in ("prepare", "detect", "segment", "verify", "lists")}
    for d in dirs.values():
        d.mkdir(parents=True)
    images = []
    for k in range(5):
        path = dirs["lists"] / f"s1_{k}.png"
        Image.new("RGB", (32, 24), (200 - 40 * k, 100, 40 * k)).save(path)
        images.append(path.name)
    (dirs["lists"] / "lists.jsonl").write_text(json.dumps(
        {"id": "s1", "prompt": "p", "chosen": "a cup", "rejected": "r", "images": images,
         "visibility": [1.0, 0.75, 0.5, 0.25, 0.0], "verified": True,
         "object": {"phrase": "cup", "source": "chosen_first", "box": [4, 4, 20, 16], "score": 0.9, "mask": "sam",
                    "mask_area": 0.3}}) + "\n")
    (dirs["detect"] / "detect.jsonl").write_text(json.dumps(
        {"id": "s1", "candidates": [{"phrase": "cup", "source": "chosen_first", "box": [4, 4, 20, 16]}]}) + "\n")
    (dirs["segment"] / "segment.jsonl").write_text(json.dumps({"id": "s1", "mask": "sam"}) + "\n")
    (dirs["verify"] / "verify.jsonl").write_text(json.dumps({"id": "s1", "verified": True, "tries": [{}]}) + "\n")
    (dirs["prepare"] / "rejects.jsonl").write_text(json.dumps({"id": "s2", "reason": "unsafe_path"}) + "\n")
    return dirs


def test_build_report_writes_summary_report_and_figures(tmp_path):
    dirs = _listgen_dirs(tmp_path / "data")
    m = tmp_path / "metrics"
    (m / "train" / "plots" / "metrics").mkdir(parents=True)
    (m / "prepare.json").write_text(json.dumps({"records_in": 2, "records_out": 1, "rejects_by_reason": {"unsafe_path": 1}}))
    for name, data in (("amber", AMBER), ("objhal", OBJHAL), ("mmhal", MMHAL)):
        (m / f"{name}.json").write_text(json.dumps(data))
    (m / "train" / "metrics.json").write_text(json.dumps(TRAIN))
    _tsv(m / "train" / "plots" / "metrics", "loss", [3.0, 2.9, 2.7])
    raw = compose(CONF, ["train.beta=0.2"])
    paths = ReportPaths(listgen_dirs=dirs, prepare_metrics=m / "prepare.json",
                        scores={b: m / f"{b}.json" for b in ("amber", "objhal", "mmhal")}, train=m / "train",
                        conf=CONF, listgen_out=m / "listgen.json", summary_out=m / "summary.json",
                        out_dir=tmp_path / "report")
    summary = build_report(paths, validate(raw), raw)
    on_disk = json.loads((m / "summary.json").read_text())
    assert on_disk == summary and summary["lists"]["lists"] == 1 and summary["lists"]["reject_rate"] == 0.5
    page = (tmp_path / "report" / "REPORT.md").read_text()
    assert_table_matches_summary(page, on_disk)
    for text in ("AMBER", "Object HalBench", "MMHal-Bench", "Training", "`train.beta`: 0.1 → 0.2"):
        assert text in page, text
    for png in ("train_loss", "train_rewards", "contact_sheet", "amber_categories"):
        assert f"({png}.png)" in page and (tmp_path / "report" / f"{png}.png").stat().st_size > 1000
    listgen = json.loads((m / "listgen.json").read_text())
    assert listgen[RANDOM_MODEL_KEY] is True and listgen["rejects"] == {"unsafe_path": 1}


def test_the_miniature_table_is_shown_only_when_the_world_ran(tmp_path):
    from lpoi.report.build import _world_table
    from lpoi.world.off import record_off

    table = "| model | CHAIR ↓ |\n|---|---|\n| base (pretrained) | 12.4 |\n| LPOI | 11.3 ± 0.2 |\n"
    (tmp_path / "world.md").write_text(table)
    record_off(text=tmp_path / "off.md")  # what world: none leaves there
    assert _world_table(tmp_path / "world.md") == table and _world_table(tmp_path / "off.md") is None
    assert _world_table(None) is None and _world_table(tmp_path / "missing.md") is None
    page = render(_inputs(world=table))
    assert "## The miniature (`world=shapes`)" in page and "| LPOI | 11.3 ± 0.2 |" in page
    # the world's trained models come before the tiny-random banner of the embedded default, not under it
    assert page.index("## The miniature") < page.index("Tiny random models") < page.index("## Results")
    assert_table_matches_summary(page, build_summary(SOURCES, True))  # the results table is still read right
    assert "miniature" not in render(_inputs())


def _curves(tmp_path):
    plots = tmp_path / "plots" / "metrics"
    for name, base in (("loss", 6.2), ("loss_dpo", 0.69), ("loss_list", 4.8), ("loss_anchor", 0.69)):
        _tsv(plots, name, [base - 0.001 * i for i in range(10)])
    for k in range(5):
        _tsv(plots, f"reward_{k}", [0.01 * i * (4 - k) for i in range(10)])
    _tsv(plots, "reward_rejected", [-0.01 * i for i in range(10)])
    return figures.read_curves(plots)


def test_each_loss_term_has_its_own_panel_and_scale(tmp_path):
    """On one axis the list term (~4.8) flattens DPO and anchor (~0.69): each term gets its own panel."""
    fig = figures.training_losses(_curves(tmp_path), tmp_path / "loss.png", title="t")
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {"total", "DPO (text pair)", "list (Plackett–Luce)", "anchor"}
    for name, (lo, hi) in (("DPO (text pair)", (0.67, 0.70)), ("list (Plackett–Luce)", (4.78, 4.81))):
        y0, y1 = panels[name].get_ylim()
        assert lo < y0 < y1 < hi, (name, y0, y1)  # its own range, tight around its own values


def test_rewards_by_visibility_in_an_ordered_colour_map_with_its_colour_bar(tmp_path):
    from matplotlib.colors import to_rgb

    fig = figures.reward_positions(_curves(tmp_path), tmp_path / "r.png", [1.0, 0.75, 0.5, 0.25, 0.0])
    left = fig.axes[0]
    lines = {ln.get_label(): ln for ln in left.get_lines()}
    lum = [sum(w * c for w, c in zip((0.2126, 0.7152, 0.0722), to_rgb(lines[f"k={k} ({v} % visible)"].get_color())))
           for k, v in enumerate((100, 75, 50, 25, 0))]
    assert all(a < b - 0.05 for a, b in zip(lum, lum[1:])), lum  # darkest = most visible, steps a reader can see
    bar = [ax for ax in fig.axes if ax.get_ylabel().startswith("visibility")]
    assert len(bar) == 1 and [t.get_text() for t in bar[0].get_yticklabels()] == ["0 %", "25 %", "50 %", "75 %", "100 %"]
    right = fig.axes[1]
    assert right.get_xlabel() == "visibility of the object in image k"
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["step 1", "step 10"]


def test_amber_colours_have_a_legend_and_rates_read_as_percentages(tmp_path):
    from lpoi.report.markdown import results_table
    from lpoi.report.summary import build_summary

    fig = figures.amber_breakdown(AMBER, tmp_path / "a.png")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["↑ higher is better", "↓ lower is better"]
    summary = build_summary({"listgen": {"records_in": 26, "rejects_total": 2, "lists_out": 24, "detection_rate": 1.0}},
                            random_model=False)
    table = "\n".join(results_table(summary, None))
    assert "| share of records rejected ↓ | 7.7 % |" in table and "| samples with an object detected ↑ | 100.0 % |" in table
    assert "| lists built | 24 |" in table


def test_the_contact_sheet_says_how_many_lists_it_shows(tmp_path):
    from lpoi.report.listgen import contact_sheet, sheet_title

    assert sheet_title(12, 24).endswith("(12 of 24 lists shown)") and sheet_title(1, 1).endswith("(1 of 1 list shown)")
    dirs = _listgen_dirs(tmp_path / "lg")
    rows = [json.loads(x) for x in (dirs["lists"] / "lists.jsonl").read_text().splitlines()]
    from lpoi.report.listgen import SheetRow

    sheet = [SheetRow([dirs["lists"] / p for p in r["images"]], r["visibility"], r["object"]["box"], "a cup", r["id"])
             for r in rows]
    contact_sheet(sheet, tmp_path / "one.png", max_rows=1, total=1)
    contact_sheet(sheet, tmp_path / "of24.png", max_rows=1, total=24)
    a, b = (Image.open(tmp_path / n) for n in ("one.png", "of24.png"))
    assert a.size == b.size and np.asarray(a).tobytes() != np.asarray(b).tobytes()  # only the title differs
