"""Tests for lpoi.train.losses.

Expected values come from (a) the official LPOI formula written out naively, (b) hand
derivations with ``math``, or (c) the separately computed components -- never from the
function under test.
"""

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from lpoi.train import losses
from lpoi.train.losses import anchor_loss, dpo_loss, image_pair_loss, listwise_loss, preference_loss


def naive_listwise(scores: torch.Tensor) -> torch.Tensor:
    """The official unrolled Plackett-Luce formula: sum_k -(s_k - log sum_{j>=k} exp s_j), k < K-1."""
    terms = [
        -(scores[:, k] - torch.log(torch.exp(scores[:, k:]).sum(-1))) for k in range(scores.shape[1] - 1)
    ]
    return torch.stack(terms, -1).sum(-1)


def shifted_listwise_py(scores: list[float]) -> float:
    """Plain-Python Plackett-Luce NLL with the max-shift trick, for scores where exp overflows."""
    total = 0.0
    for k in range(len(scores) - 1):
        tail = scores[k:]
        m = max(tail)
        total += m + math.log(sum(math.exp(s - m) for s in tail)) - scores[k]
    return total


def random_logps(seed: int, batch: int, k: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    policy = -30 * torch.rand(batch, k, generator=g, dtype=dtype)  # sums of token log-probs are <= 0
    reference = -30 * torch.rand(batch, k, generator=g, dtype=dtype)
    return policy, reference


# --- listwise: agreement with the official formula -------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch", [1, 3, 16])
def test_listwise_k5_equals_official_unrolled_formula(seed, batch):
    policy, reference = random_logps(seed, batch, 5)
    beta = 0.1
    s = beta * (policy - reference)
    # The official dpo_pl5_loss, term by term (four terms for five images).
    official = sum(-(s[:, k] - torch.log(sum(torch.exp(s[:, j]) for j in range(k, 5)))) for k in range(4))
    torch.testing.assert_close(listwise_loss(policy, reference, beta), official, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", range(2, 8))
def test_listwise_generic_k_matches_naive(k):
    policy, reference = random_logps(10 + k, 4, k)
    beta = 0.3
    expected = naive_listwise(beta * (policy - reference))
    torch.testing.assert_close(listwise_loss(policy, reference, beta), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_listwise_k2_equals_dpo(seed):
    """List [chosen on original image, chosen on other image] is DPO with those two sequences."""
    policy, reference = random_logps(seed, 8, 2)
    beta = 0.1
    s = beta * (policy - reference)
    expected = -F.logsigmoid(s[:, 0] - s[:, 1])
    got = listwise_loss(policy, reference, beta)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    via_dpo = dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta)
    torch.testing.assert_close(got, via_dpo, atol=1e-12, rtol=0)


@pytest.mark.parametrize("k", [2, 5, 7])
def test_listwise_gradients_match_naive_autograd(k):
    policy, reference = random_logps(100 + k, 3, k)
    beta = 0.5
    p1 = policy.clone().requires_grad_(True)
    p2 = policy.clone().requires_grad_(True)
    listwise_loss(p1, reference, beta).sum().backward()
    naive_listwise(beta * (p2 - reference)).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad, atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(
        lambda p: listwise_loss(p, reference, beta), (policy.clone().requires_grad_(True),)
    )


# --- listwise: hand-derived values -----------------------------------------------------------


def test_listwise_hand_derived_tiny_cases():
    zero2, zero3, zero4 = (torch.zeros(1, n, dtype=torch.float64) for n in (2, 3, 4))
    # K = 2, S = (2, -1): log(e^2 + e^-1) - 2 = log(1 + e^-3).
    got = listwise_loss(torch.tensor([[2.0, -1.0]], dtype=torch.float64), zero2, beta=1.0)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-3)), abs=1e-12)
    # K = 3, beta = 0.5, policy (2, 0, -2) -> S = (1, 0, -1):
    # [log(e + 1 + 1/e) - 1] + [log(1 + 1/e) - 0].
    got = listwise_loss(torch.tensor([[2.0, 0.0, -2.0]], dtype=torch.float64), zero3, beta=0.5)
    expected = math.log(math.e + 1 + 1 / math.e) - 1 + math.log(1 + 1 / math.e)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    # K = 4, all scores equal: each step picks 1 of the remaining n uniformly -> log 4 + log 3 + log 2.
    got = listwise_loss(torch.full((1, 4), -7.0, dtype=torch.float64), zero4, beta=0.1)
    assert got.item() == pytest.approx(math.log(24), abs=1e-12)
    # The reference shifts scores: policy == reference gives S = 0 regardless of the values.
    got = listwise_loss(torch.tensor([[-5.0, -9.0]]), torch.tensor([[-5.0, -9.0]]), beta=0.1)
    assert got.item() == pytest.approx(math.log(2), abs=1e-6)


# --- listwise: numerical stability ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "scores",
    [
        [1e4, 5e3, 0.0, -5e3, -1e4],  # correctly ranked, huge gaps -> loss ~ 0
        [-1e4, -5e3, 0.0, 5e3, 1e4],  # reversed -> loss ~ 4e4
        [1e4, 1e4, 1e4, 1e4, 1e4],  # ties at a huge value -> log 5!
        [-1e4, 1e4, -1e4, 1e4, 0.0],
    ],
)
def test_listwise_finite_for_huge_scores_where_naive_overflows(scores, dtype):
    s = torch.tensor([scores], dtype=dtype)
    zero = torch.zeros_like(s)
    # The naive formula really breaks here, so this test is meaningful.
    assert not torch.isfinite(naive_listwise(s)).all()

    policy = s.clone().requires_grad_(True)
    loss = listwise_loss(policy, zero, beta=1.0)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(policy.grad).all()
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert loss.item() == pytest.approx(
        shifted_listwise_py(scores), rel=rtol, abs=1e-3 if dtype == torch.float32 else 1e-9
    )


def test_listwise_large_beta_times_logps_is_finite():
    """beta * (policy - reference) reaches 1e4 from realistic log-prob sums with a large beta."""
    policy = torch.tensor([[-10.0, -2000.0, -4000.0], [-4000.0, -2000.0, -10.0]], requires_grad=True)
    reference = torch.full((2, 3), -2000.0)
    loss = listwise_loss(policy, reference, beta=5.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(policy.grad).all()
    assert loss[0].item() < 1e-3  # ranked right with gaps of 1e4
    assert loss[1].item() > 1e4  # ranked backwards


# --- shape and argument errors ----------------------------------------------------------------


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="policy_logps must be 2-D"):
        listwise_loss(torch.zeros(5), torch.zeros(5), 0.1)
    with pytest.raises(ValueError, match="reference_logps has shape"):
        listwise_loss(torch.zeros(2, 5), torch.zeros(2, 4), 0.1)
    with pytest.raises(ValueError, match="K >= 2"):
        listwise_loss(torch.zeros(2, 1), torch.zeros(2, 1), 0.1)
    with pytest.raises(ValueError, match="policy_rejected_logps has shape"):
        dpo_loss(torch.zeros(3), torch.zeros(4), torch.zeros(3), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="policy_chosen_logps must be 1-D"):
        anchor_loss(torch.zeros(3, 1), torch.zeros(3, 1), 0.1)
    with pytest.raises(ValueError, match="beta must be > 0"):
        listwise_loss(torch.zeros(2, 5), torch.zeros(2, 5), 0.0)


# --- pairwise terms: hand-derived values ------------------------------------------------------


def test_dpo_anchor_image_pair_hand_derived():
    def t(*v):
        return torch.tensor(v, dtype=torch.float64)

    # DPO: ((-1) - (-2)) - ((-3) - (-2)) = 2; beta 0.1 -> -log sigmoid(0.2) = log(1 + e^-0.2).
    got = dpo_loss(t(-1.0), t(-3.0), t(-2.0), t(-2.0), beta=0.1)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-0.2)), abs=1e-12)
    # Anchor: 0.1 * ((-1) - (-3)) - 0.5 = -0.3 -> log(1 + e^0.3).
    got = anchor_loss(t(-1.0), t(-3.0), beta=0.1, delta=0.5)
    assert got.item() == pytest.approx(math.log(1 + math.exp(0.3)), abs=1e-12)
    # Image pair: same text, original vs corrupted image: (-4 - -5) - (-9 - -6) = 4 -> log(1 + e^-0.4).
    got = image_pair_loss(t(-4.0), t(-9.0), t(-5.0), t(-6.0), beta=0.1)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-0.4)), abs=1e-12)


# --- preference_loss ---------------------------------------------------------------------------


def _batch(seed=0, batch=4, k=5):
    policy_list, ref_list = random_logps(seed, batch, k)
    policy_rej, ref_rej = random_logps(seed + 1000, batch, 1)
    return {
        "policy_list_logps": policy_list,
        "policy_rejected_logps": policy_rej[:, 0],
        "reference_list_logps": ref_list,
        "reference_rejected_logps": ref_rej[:, 0],
    }


WEIGHTS = {"dpo": 0.5, "list": 2.0, "anchor": 3.0}


@pytest.mark.parametrize("method", ["lpoi", "mdpo", "dpo"])
def test_preference_loss_combines_components_with_weights(method):
    b, beta, delta = _batch(), 0.1, 0.2
    pl, rl = b["policy_list_logps"], b["reference_list_logps"]
    pr, rr = b["policy_rejected_logps"], b["reference_rejected_logps"]
    out = preference_loss(method, **b, beta=beta, weights=WEIGHTS, delta=delta)

    dpo = dpo_loss(pl[:, 0], pr, rl[:, 0], rr, beta)
    anchor = anchor_loss(pl[:, 0], rl[:, 0], beta, delta)
    if method == "lpoi":
        lst = listwise_loss(pl, rl, beta)
    elif method == "mdpo":
        lst = image_pair_loss(pl[:, 0], pl[:, -1], rl[:, 0], rl[:, -1], beta)

    if method == "dpo":
        expected_total = 0.5 * dpo
        assert "list" not in out and "anchor" not in out
    else:
        expected_total = 0.5 * dpo + 2.0 * lst + 3.0 * anchor
        torch.testing.assert_close(out["list"], lst.mean())
        torch.testing.assert_close(out["anchor"], anchor.mean())
    torch.testing.assert_close(out["dpo"], dpo.mean())
    torch.testing.assert_close(out["loss"], expected_total.mean())
    assert out["loss"].dim() == 0


def test_preference_loss_gradient_reaches_the_columns_each_method_uses():
    used = {"lpoi": [0, 1, 2, 3, 4], "mdpo": [0, 4], "dpo": [0]}
    for method, cols in used.items():
        b = _batch(seed=3)
        b["policy_list_logps"] = b["policy_list_logps"].clone().requires_grad_(True)
        b["policy_rejected_logps"] = b["policy_rejected_logps"].clone().requires_grad_(True)
        preference_loss(method, **b, beta=0.1).pop("loss").backward()
        grad = b["policy_list_logps"].grad
        nonzero = [k for k in range(5) if grad[:, k].abs().sum() > 0]
        assert nonzero == cols, method
        assert b["policy_rejected_logps"].grad.abs().sum() > 0


def test_preference_loss_dpo_allows_k1_others_do_not():
    b = _batch(k=1)
    out = preference_loss("dpo", **b, beta=0.1, weights={"dpo": 1.0})
    assert out["rewards"].shape == (4, 1) and "ranking_accuracy" not in out
    for method in ("lpoi", "mdpo"):
        with pytest.raises(ValueError, match="K >= 2"):
            preference_loss(method, **b, beta=0.1)


def test_preference_loss_errors():
    b = _batch()
    with pytest.raises(ValueError, match=r"unknown method 'ipo'.*'lpoi', 'mdpo', 'dpo'"):
        preference_loss("ipo", **b, beta=0.1)
    with pytest.raises(ValueError, match=r"unknown loss weight.*'lists'"):
        preference_loss("lpoi", **b, beta=0.1, weights={"dpo": 1, "lists": 1, "anchor": 1})
    with pytest.raises(ValueError, match=r"missing \['anchor'\]"):
        preference_loss("lpoi", **b, beta=0.1, weights={"dpo": 1, "list": 1})
    bad = dict(
        b,
        policy_rejected_logps=b["policy_rejected_logps"][:3],
        reference_rejected_logps=b["reference_rejected_logps"][:3],
    )
    with pytest.raises(ValueError, match="batch size"):
        preference_loss("lpoi", **bad, beta=0.1)
    with pytest.raises(ValueError, match="reference_list_logps has shape"):
        preference_loss("lpoi", **dict(b, reference_list_logps=b["reference_list_logps"][:, :4]), beta=0.1)


def test_preference_loss_diagnostics_on_crafted_example():
    # beta = 1 and zero reference, so rewards == policy log-probs.
    policy_list = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    policy_rej = torch.tensor([1.0, 5.0, -1.0])
    out = preference_loss(
        "lpoi",
        policy_list_logps=policy_list.clone().requires_grad_(True),
        policy_rejected_logps=policy_rej,
        reference_list_logps=torch.zeros(3, 4),
        reference_rejected_logps=torch.zeros(3),
        beta=1.0,
    )
    # Adjacent pairs in order: 3/3, 2/3 (1 < 2 is wrong), 0/3 -> 5/9.
    assert out["ranking_accuracy"].item() == pytest.approx(5 / 9)
    # rewards[:, 0] vs rejected: 3 > 1 yes, 3 > 5 no, 0 > -1 yes -> 2/3.
    assert out["reward_accuracy"].item() == pytest.approx(2 / 3)
    # margin = mean(2, -2, 1) = 1/3.
    assert out["margin"].item() == pytest.approx(1 / 3)
    torch.testing.assert_close(out["rewards"], policy_list)
    torch.testing.assert_close(out["rewards_rejected"], policy_rej)
    assert not out["rewards"].requires_grad and not out["margin"].requires_grad
    assert out["loss"].requires_grad


def test_ties_do_not_count_as_correctly_ranked():
    out = preference_loss(
        "lpoi",
        policy_list_logps=torch.zeros(2, 3),
        policy_rejected_logps=torch.zeros(2),
        reference_list_logps=torch.zeros(2, 3),
        reference_rejected_logps=torch.zeros(2),
        beta=0.1,
    )
    assert out["ranking_accuracy"].item() == 0.0 and out["reward_accuracy"].item() == 0.0


def test_reward_stats_are_the_diagnostics_of_preference_loss():
    g = torch.Generator().manual_seed(0)
    args = {"policy_list_logps": torch.randn(4, 5, generator=g, dtype=torch.float64),
            "policy_rejected_logps": torch.randn(4, generator=g, dtype=torch.float64),
            "reference_list_logps": torch.randn(4, 5, generator=g, dtype=torch.float64),
            "reference_rejected_logps": torch.randn(4, generator=g, dtype=torch.float64), "beta": 0.1}
    out, stats = preference_loss("lpoi", **args), losses.reward_stats(**args)
    assert list(stats) == ["rewards", "rewards_rejected", "margin", "reward_accuracy", "ranking_accuracy"]
    assert all(torch.equal(out[k], v) for k, v in stats.items())
    assert "ranking_accuracy" not in losses.reward_stats(**{**args, "policy_list_logps": args["policy_list_logps"][:, :1],
                                                           "reference_list_logps": args["reference_list_logps"][:, :1]})


def test_module_doctests_pass():
    result = doctest.testmod(losses, raise_on_error=False)
    assert result.attempted >= 4
    assert result.failed == 0
