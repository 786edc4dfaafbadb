"""Training on the tiny models: reference modes agree, resume reproduces the curve, the loss learns,
outputs load, bad inputs fail naming the row, the data order is a pure function of (seed, step).

Hand-derived first-step values: before the first update LoRA's B matrices are zero, so the policy
equals the reference and every reward is 0. Then DPO = anchor = image-pair = -log sigmoid(0) = log 2
and the Plackett-Luce list loss with K equal scores is -sum_k log(1/(K-k)) = log K!. Hence
lpoi (K=5): 2 log 2 + log 120; mdpo: 3 log 2; dpo: log 2.
"""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lpoi.config import LoraParams
from lpoi.train.data import ManifestError, step_sample_indices, write_synthetic_lists
from lpoi.train.guards import NonFiniteLossError
from lpoi.train.loader import micro_batches as _micro_batches
from lpoi.train.lora import VISION_MODULES, lora_config
from lpoi.train.reference import ReferenceError, row_seal, run_reference
from trainkw import MAX_LENGTH
from trainkw import run_train as train

LLAVA, IDEFICS2 = "tiny/llava", "tiny/idefics2"



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    lists = write_synthetic_lists(root, n_samples=8, k=5)
    ref = root / "reference_llava.jsonl"
    run_reference(lists, ref, model_name=LLAVA, batch_size=4, progress=False, max_length=MAX_LENGTH)
    return lists, ref


def _run(data, out, **kw):
    lists, ref = data
    args = dict(
        lists_path=lists,
        reference_path=ref,
        out_dir=out,
        model_name=LLAVA,
        method="lpoi",
        beta=1.0,
        lr=3e-3,
        batch_size=2,
        scheduler="constant",
        save_steps=0,
        progress=False,
        seed=0,
        lora={"r": 8, "alpha": 16, "dropout": 0.0},
    )
    args.update(kw)
    return train(**args)


def _losses(summary):
    return [h["loss"] for h in summary["history"]]


def _tsv(path):
    head, *rows = [line.split("\t") for line in Path(path).read_text().splitlines()]
    return [(int(r[head.index("step")]), float(r[-1])) for r in rows]  # (step, value)


def test_precomputed_and_online_reference_give_the_same_losses(data, tmp_path):
    pre = _run(data, tmp_path / "pre", max_steps=3)
    on = _run(data, tmp_path / "on", max_steps=3, reference="online", reference_path=None)
    assert _losses(pre)[0] == pytest.approx(2 * math.log(2) + math.log(120), abs=1e-6)
    assert abs(pre["history"][2]["reward_0"]) > 1e-2  # policy != reference by step 3: a real comparison
    np.testing.assert_allclose(_losses(pre), _losses(on), atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        [h["reward_2"] for h in pre["history"]], [h["reward_2"] for h in on["history"]], atol=1e-5, rtol=0
    )


class _Killed(RuntimeError):
    pass


def test_resume_reproduces_the_uninterrupted_curve(data, tmp_path):
    common = dict(
        max_steps=6,
        batch_size=1,
        grad_accum=2,
        save_steps=2,
        scheduler="cosine",
        warmup_ratio=0.2,
        lora={"r": 4, "alpha": 16, "dropout": 0.1},
    )  # dropout: the RNG state must be restored too
    full = _run(data, tmp_path / "full", live_dir=tmp_path / "live_full", **common)

    def kill_at_5(step, metrics):
        if step == 5:
            raise _Killed("simulated kill after step 5")

    with pytest.raises(_Killed):
        _run(data, tmp_path / "cut", live_dir=tmp_path / "live_cut", callback=kill_at_5, **common)
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert ckpts == ["step-2", "step-4"]
    resumed = _run(data, tmp_path / "cut", live_dir=tmp_path / "live_cut", **common)
    assert resumed["resumed_from"] == 4 and [h["step"] for h in resumed["history"]] == [5, 6]

    a = _tsv(tmp_path / "live_full" / "plots" / "metrics" / "loss.tsv")
    b = _tsv(tmp_path / "live_cut" / "plots" / "metrics" / "loss.tsv")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([v for _, v in a], [v for _, v in b], atol=1e-6, rtol=0)
    np.testing.assert_allclose(_losses(full)[4:], _losses(resumed), atol=1e-6, rtol=0)

    from safetensors.torch import load_file

    wa = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-6
    assert not (tmp_path / "cut" / "checkpoints").exists()  # removed once training finished
    assert json.loads((tmp_path / "live_cut" / "metrics.json").read_text())["step"] == 6


def test_checkpoints_of_another_configuration_are_not_resumed(data, tmp_path):
    def kill_at_2(step, metrics):
        if step == 2:
            raise _Killed()

    with pytest.raises(_Killed):
        _run(data, tmp_path / "o", max_steps=3, save_steps=1, callback=kill_at_2)
    with pytest.warns(UserWarning, match="different configuration"):
        s = _run(data, tmp_path / "o", max_steps=3, save_steps=1, lr=1e-3)
    assert s["resumed_from"] == 0 and len(s["history"]) == 3


# ---------------------------------------------------------------------------------------------- learning


def _evaluate(model_dir_or_adapter, data, base=LLAVA, merged=False):
    """Loss and list ranking accuracy of a trained adapter (or merged model) on all samples."""
    from peft import PeftModel

    from lpoi.models import load_vlm
    from lpoi.train.collate import collate_samples
    from lpoi.train.data import load_lists
    from lpoi.train.logprobs import sequence_logps
    from lpoi.train.losses import preference_loss
    from lpoi.train.reference import load_reference

    lists, ref = data
    model, processor = load_vlm(str(model_dir_or_adapter) if merged else base)
    if not merged:
        model = PeftModel.from_pretrained(model, str(model_dir_or_adapter)).eval()
    samples = load_lists(lists)
    ref_list, ref_rej, _ = load_reference(ref, samples, model_name=base, max_length=MAX_LENGTH)
    with torch.no_grad():
        logps = sequence_logps(model, collate_samples(processor, samples, columns=range(5))).view(
            len(samples), 6
        )
    return preference_loss(
        "lpoi",
        policy_list_logps=logps[:, :5],
        policy_rejected_logps=logps[:, 5],
        reference_list_logps=ref_list,
        reference_rejected_logps=ref_rej,
        beta=1.0,
    ), logps


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    summary = _run(data, out / "run", max_steps=40, merge=True, live_dir=out / "live")
    return out, summary


def test_learning_signal_reaches_every_term(trained, data):
    """40 steps at a high lr: the full-dataset loss falls, each term falls, the ranking becomes right.

    Before training every reward is 0: ranking accuracy 0 (ties), 0.5 for a random adapter."""
    out, summary = trained
    after, _ = _evaluate(out / "run" / "adapter", data)
    start = 2 * math.log(2) + math.log(120)
    assert float(after["loss"]) < 0.5 * start
    assert float(after["dpo"]) < math.log(2) - 0.1
    assert float(after["anchor"]) < math.log(2) - 0.1
    assert float(after["list"]) < math.log(120) - 1.0
    assert float(after["ranking_accuracy"]) >= 0.85
    assert float(after["reward_accuracy"]) == 1.0
    assert summary["history"][0]["ranking_accuracy"] == 0.0


def test_outputs_adapter_and_merged_weights(trained, data):
    out, summary = trained
    adapter = out / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    merged = out / "run" / "merged"
    assert list(merged.glob("*.safetensors")) and (merged / "config.json").is_file()
    assert (merged / "processor_config.json").is_file() or (merged / "preprocessor_config.json").is_file()
    _, via_adapter = _evaluate(adapter, data)
    _, via_merged = _evaluate(merged, data, merged=True)
    np.testing.assert_allclose(via_adapter.numpy(), via_merged.numpy(), atol=1e-4, rtol=0)
    assert summary["adapter_dir"] == str(adapter) and summary["merged_dir"] == str(merged)


def test_dvclive_logs_every_step(trained):
    out, _ = trained
    live = out / "live"
    metrics = json.loads((live / "metrics.json").read_text())
    want = {
        "loss",
        "loss_dpo",
        "loss_list",
        "loss_anchor",
        "reward_0",
        "reward_1",
        "reward_2",
        "reward_3",
        "reward_4",
        "reward_rejected",
        "margin",
        "ranking_accuracy",
        "reward_accuracy",
        "lr",
        "grad_norm",
        "n_truncated",
    }
    assert want <= set(metrics) and metrics["step"] == 40
    # timings are not results (issue 10): they stay out of the curves and metrics a baseline commits
    assert not {"samples_per_s", "train_seconds", "train_samples_per_s"} & set(metrics)
    assert not (live / "plots" / "metrics" / "samples_per_s.tsv").exists()
    for name in ("loss", "ranking_accuracy", "reward_4", "lr"):
        rows = _tsv(live / "plots" / "metrics" / f"{name}.tsv")
        assert [s for s, _ in rows] == list(range(1, 41))


# ---------------------------------------------------------------------------------------------- methods


def test_mdpo_first_step_losses_and_the_crop_reference(data, tmp_path):
    """mDPO's crop column gets its reference online (adapter off), so its reward starts at exactly 0 --
    while the crop does change the base model's log-prob, so a reference taken from another image would
    show up as a non-zero reward."""
    from lpoi.models import load_vlm
    from lpoi.train.collate import CROP, collate_samples
    from lpoi.train.data import load_lists
    from lpoi.train.logprobs import sequence_logps

    crop = _run(data, tmp_path / "crop", method="mdpo", mdpo_corruption="crop", max_steps=1, beta=0.1)
    assert crop["final"]["loss"] == pytest.approx(3 * math.log(2), abs=1e-6)
    assert crop["final"]["reward_crop"] == pytest.approx(0.0, abs=1e-6)
    model, processor = load_vlm(LLAVA)
    first = step_sample_indices(0, n_samples=8, global_batch=2, seed=0)
    samples = [load_lists(data[0])[i] for i in first]
    with torch.no_grad():
        base = sequence_logps(model, collate_samples(processor, samples, columns=(0, CROP), crop_key="0:0"))
    base = base.view(2, 3)
    assert float((0.1 * (base[:, 1] - base[:, 0])).abs().mean()) > 1e-4

    hidden = _run(data, tmp_path / "hidden", method="mdpo", max_steps=1, beta=0.1)
    assert hidden["final"]["loss"] == pytest.approx(3 * math.log(2), abs=1e-6)
    rewards = {k for k in hidden["final"] if k.startswith("reward_") and k != "reward_accuracy"}
    assert rewards == {"reward_0", "reward_4", "reward_rejected"}


def test_dpo_on_idefics2(tmp_path):
    lists = write_synthetic_lists(tmp_path / "d", n_samples=4, k=3)
    ref = tmp_path / "ref.jsonl"
    run_reference(lists, ref, model_name=IDEFICS2, progress=False, max_length=MAX_LENGTH)
    dpo = train(
        lists_path=lists,
        reference_path=ref,
        out_dir=tmp_path / "dpo",
        model_name=IDEFICS2,
        method="dpo",
        batch_size=2,
        max_steps=2,
        save_steps=0,
        progress=False,
        lr=1e-2,
    )
    assert dpo["history"][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert dpo["history"][1]["loss"] != dpo["history"][0]["loss"]  # the update changed the policy
    assert "loss_list" not in dpo["final"] and "ranking_accuracy" not in dpo["final"]


def test_lora_can_exclude_the_vision_side():
    from peft import get_peft_model

    from lpoi.models import load_vlm

    for name, vision in (
        (IDEFICS2, ("vision_model", "connector")),
        (LLAVA, ("vision_tower", "multi_modal_projector")),
    ):
        assert set(vision) <= set(VISION_MODULES)
        for exclude in (False, True):
            model, _ = load_vlm(name)
            peft_model = get_peft_model(model, lora_config(LoraParams(r=4, alpha=4, exclude_vision_tower=exclude)))
            adapted = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
            on_vision = [n for n in adapted if any(f".{v}." in n for v in vision)]
            assert adapted and len(adapted) > len(on_vision)
            assert bool(on_vision) is (not exclude)


# ---------------------------------------------------------------------------------------------- bad input


def _manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_inputs_fail_naming_the_row(data, tmp_path):
    lists, ref = data
    rows = [json.loads(x) for x in lists.read_text().splitlines()]
    d = lists.parent

    def check(bad_rows, exc, pattern, name, **kw):
        path = _manifest(d / name, bad_rows)
        with pytest.raises(exc, match=pattern):
            _run((path, ref), tmp_path / name, max_steps=1, **kw)

    missing = [dict(r) for r in rows]
    missing[3] = {**rows[3], "images": rows[3]["images"][:4] + ["images/gone.png"]}
    check(missing, ManifestError, r"'s003'.*missing image", "m1.jsonl")
    short = [dict(r) for r in rows]
    short[5] = {**rows[5], "images": rows[5]["images"][:4]}
    check(short, ManifestError, r"'s005'.*wrong list length 4", "m2.jsonl")
    single = [{**r, "images": r["images"][:1]} for r in rows]
    check(single, ManifestError, r"'s000'.*needs K >= 2", "m3.jsonl")
    check([], ManifestError, "empty", "m4.jsonl")
    check(rows + [rows[2]], ManifestError, r"'s002'.*duplicate", "m5.jsonl")
    extra = rows + [{**rows[0], "id": "new"}]
    check(extra, ReferenceError, r"no reference log-probs for sample 'new'", "m6.jsonl")
    check(rows, ValueError, r"train.beta must be > 0, got -1", "m7.jsonl", beta=-1)
    check(rows, ValueError, r"unknown train.lora key", "m8.jsonl", lora={"rank": 4})


def _resealed(row: dict) -> dict:
    """``row`` as the reference stage would have written it with these values and digests."""
    return {**row, "seal": row_seal(row["seqs"], row["list"], row["rejected"])}


def test_an_edited_reference_row_stops_training_naming_it(data, tmp_path):
    """The step-0 check compares policy and reference on the first batch only, so a log-prob edited in the
    row of a sample first used later was trained on. Now every row's seal is checked when the file is
    loaded, and every built sequence against its row's token digest at every step."""
    lists, ref = data
    first = set(step_sample_indices(0, n_samples=8, global_batch=2, seed=0))
    later = min(set(range(8)) - first)  # a sample the step-0 check never sees
    lines = ref.read_text().splitlines(keepends=True)
    row = json.loads(lines[1 + later])

    def with_row(name: str, new: dict) -> Path:
        path = tmp_path / name
        path.write_text("".join(lines[: 1 + later]) + json.dumps(new) + "\n" + "".join(lines[2 + later :]))
        return path

    edited = with_row("ref_value.jsonl", {**row, "list": [v + 5.0 for v in row["list"]]})
    with pytest.raises(ReferenceError, match=rf"{edited}:{later + 2}: the reference row of sample 's{later:03d}' "
                                             "is not what the reference stage wrote"):
        _run((lists, edited), tmp_path / "o1", max_steps=4)
    # a token digest changed and the row re-sealed (as if made under another tokenisation): caught in the
    # step whose batch holds the sample, naming the sequence
    seqs = list(row["seqs"])
    seqs[2] = "0" * 64
    resealed = with_row("ref_seqs.jsonl", _resealed({**row, "seqs": seqs}))
    step = next(t for t in range(8) if later in step_sample_indices(t, n_samples=8, global_batch=2, seed=0))
    assert step > 0
    with pytest.raises(ReferenceError, match=rf"{resealed}:{later + 2}: sample 's{later:03d}': the tokens training "
                                             "built for list image 2 are not those its reference row"):
        _run((lists, resealed), tmp_path / "o2", max_steps=step + 1)


def test_nan_loss_stops_naming_the_batch(data, tmp_path):
    lists, ref = data
    lines = ref.read_text().splitlines()
    bad = [lines[0]] + [json.dumps(_resealed({**json.loads(x), "rejected": float("nan")})) for x in lines[1:]]
    nan_ref = tmp_path / "ref_nan.jsonl"
    nan_ref.write_text("\n".join(bad) + "\n")
    first = step_sample_indices(0, n_samples=8, global_batch=2, seed=0)
    with pytest.raises(NonFiniteLossError, match=r"step 1 on samples \['s%03d', 's%03d'\]" % tuple(first)):
        _run((lists, nan_ref), tmp_path / "o", max_steps=2)


# ---------------------------------------------------------------------------------------------- data order


def test_data_order_is_a_function_of_seed_and_step():
    n, g = 10, 4  # 3 steps per epoch; the last batch wraps around to the epoch's first indices
    epoch0 = [step_sample_indices(s, n_samples=n, global_batch=g, seed=7) for s in range(3)]
    flat = sum(epoch0, [])
    assert sorted(flat[:10]) == list(range(10)) and flat[10:] == flat[:2]
    assert epoch0 == [step_sample_indices(s, n_samples=n, global_batch=g, seed=7) for s in range(3)]
    assert epoch0 != [step_sample_indices(s, n_samples=n, global_batch=g, seed=8) for s in range(3)]
    epoch1 = [step_sample_indices(s, n_samples=n, global_batch=g, seed=7) for s in range(3, 6)]
    assert sorted(sum(epoch1, [])[:10]) == list(range(10)) and epoch1 != epoch0
    # 2 processes x batch 1 x accumulation 2 cover exactly the samples of 1 process x batch 4
    one = _micro_batches(0, 3, n=n, batch_size=4, grad_accum=1, world=1, rank=0, seed=7)
    two = [_micro_batches(0, 3, n=n, batch_size=1, grad_accum=2, world=2, rank=r, seed=7) for r in (0, 1)]
    for step in range(3):
        merged = sorted(i for r in (0, 1) for mb in two[r][2 * step : 2 * step + 2] for _, i in mb)
        assert merged == sorted(i for _, i in one[step])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {e for mb in one for e, _ in mb} == {0}
