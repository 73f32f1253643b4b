"""KD losses: parity with TRL's GKD reference, mathematical properties, masking, chunked projection."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distilltune.distill.losses import (
    IGNORE_INDEX,
    LOSSES,
    bucket_logprobs,
    chunked_head_loss,
    kd_loss,
    mix_with_ce,
    teacher_buckets,
    topk_kd_loss,
)

gkd = pytest.importorskip("trl.experimental.gkd")
trl_jsd = gkd.GKDTrainer.generalized_jsd_loss


def _logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def _labels(b, s, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    labels = torch.randint(0, 50, (b, s), generator=g)
    labels[torch.rand(b, s, generator=g) < 0.4] = IGNORE_INDEX
    return labels


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 0.25])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
def test_jsd_matches_trl_generalized_jsd(beta, temperature):
    s, t = _logits(3, 7, 50, seed=1), _logits(3, 7, 50, seed=2)
    labels = _labels(3, 7)
    ref = trl_jsd(s, t, labels=labels, beta=beta, temperature=temperature)
    ours = kd_loss(s, t, labels, loss="jsd", beta=beta, temperature=temperature)
    # TRL does not apply the T² factor; ours does (Hinton et al.).
    torch.testing.assert_close(ours.double(), ref.double() * temperature**2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss,beta", [("fkl", 0.0), ("rkl", 1.0)])
def test_forward_and_reverse_kl_match_trl_endpoints(loss, beta):
    s, t = _logits(2, 5, 40, seed=3), _logits(2, 5, 40, seed=4)
    labels = _labels(2, 5, seed=3)
    ref = trl_jsd(s, t, labels=labels, beta=beta)
    torch.testing.assert_close(kd_loss(s, t, labels, loss=loss).double(), ref.double(), rtol=1e-5, atol=1e-6)


def test_forward_kl_matches_torch_kl_div():
    s, t = _logits(4, 30, seed=5), _logits(4, 30, seed=6)
    ref = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
    torch.testing.assert_close(kd_loss(s, t, loss="fkl").double(), ref, rtol=1e-5, atol=1e-6)


def test_skew_kl_matches_definition():
    s, t = _logits(6, 20, seed=7), _logits(6, 20, seed=8)
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    a = 0.1
    mix = a * p + (1 - a) * q
    ref = (p * (p.log() - mix.log())).sum(-1).mean()
    torch.testing.assert_close(kd_loss(s, t, loss="skl", skew=a).double(), ref, rtol=1e-5, atol=1e-6)
    mix_r = a * q + (1 - a) * p
    ref_r = (q * (q.log() - mix_r.log())).sum(-1).mean()
    torch.testing.assert_close(kd_loss(s, t, loss="srkl", skew=a).double(), ref_r, rtol=1e-5, atol=1e-6)


def test_tvd_matches_definition_and_is_bounded():
    s, t = _logits(6, 20, seed=9), _logits(6, 20, seed=10)
    ref = 0.5 * (F.softmax(s, -1) - F.softmax(t, -1)).abs().sum(-1).mean()
    got = kd_loss(s, t, loss="tvd")
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6)
    assert 0.0 < float(got) <= 1.0


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_zero_for_identical_and_positive_otherwise(loss, temperature):
    s = _logits(5, 64, seed=11)
    assert float(kd_loss(s, s.clone(), loss=loss, temperature=temperature)) == pytest.approx(0.0, abs=1e-6)
    t = _logits(5, 64, seed=12)
    assert float(kd_loss(s, t, loss=loss, temperature=temperature)) > 1e-3


def test_jsd_endpoints_equal_forward_and_reverse_kl():
    s, t = _logits(8, 33, seed=13), _logits(8, 33, seed=14)
    torch.testing.assert_close(kd_loss(s, t, loss="jsd", beta=0.0), kd_loss(s, t, loss="fkl"))
    torch.testing.assert_close(kd_loss(s, t, loss="jsd", beta=1.0), kd_loss(s, t, loss="rkl"))
    # forward and reverse KL really differ on these inputs, so the check above can fail
    assert abs(float(kd_loss(s, t, loss="fkl")) - float(kd_loss(s, t, loss="rkl"))) > 1e-3


def test_jsd_half_is_symmetric_and_bounded_by_log2():
    s, t = _logits(8, 33, seed=15), _logits(8, 33, seed=16)
    a = kd_loss(s, t, loss="jsd", beta=0.5)
    b = kd_loss(t, s, loss="jsd", beta=0.5)
    torch.testing.assert_close(a, b)
    assert 0 < float(a) <= math.log(2)
    # generic beta is not symmetric
    assert abs(float(kd_loss(s, t, loss="jsd", beta=0.2)) - float(kd_loss(t, s, loss="jsd", beta=0.2))) > 1e-4


def test_skew_zero_reduces_to_kl():
    s, t = _logits(4, 21, seed=17), _logits(4, 21, seed=18)
    torch.testing.assert_close(kd_loss(s, t, loss="skl", skew=0.0), kd_loss(s, t, loss="fkl"))
    torch.testing.assert_close(kd_loss(s, t, loss="srkl", skew=0.0), kd_loss(s, t, loss="rkl"))


@pytest.mark.parametrize("loss", LOSSES)
def test_all_ignored_is_zero_not_nan_with_finite_grads(loss):
    s = _logits(2, 4, 30, seed=19).float().requires_grad_(True)
    t = _logits(2, 4, 30, seed=20).float()
    labels = torch.full((2, 4), IGNORE_INDEX)
    out = kd_loss(s, t, labels, loss=loss)
    assert float(out.detach()) == 0.0
    out.backward()
    assert torch.isfinite(s.grad).all() and float(s.grad.abs().sum()) == 0.0


def test_ignored_positions_do_not_change_the_loss():
    s, t = _logits(2, 6, 30, seed=21), _logits(2, 6, 30, seed=22)
    labels = _labels(2, 6, seed=5)
    base = kd_loss(s, t, labels, loss="rkl")
    s2 = s.clone()
    s2[labels == IGNORE_INDEX] = 1000.0  # garbage at ignored positions
    torch.testing.assert_close(kd_loss(s2, t, labels, loss="rkl"), base)
    keep = labels != IGNORE_INDEX
    torch.testing.assert_close(base, kd_loss(s[keep], t[keep], loss="rkl"))


def test_extreme_logits_stay_finite():
    s = torch.zeros(3, 40)
    s[:, 0] = 200.0  # a one-hot student
    t = torch.zeros(3, 40)
    t[:, 1] = 200.0
    for loss in LOSSES:
        v = kd_loss(s.clone().requires_grad_(True), t, loss=loss)
        assert torch.isfinite(v), loss


def test_mix_with_ce():
    kd, ce = torch.tensor(2.0), torch.tensor(4.0)
    assert float(mix_with_ce(kd, ce, 0.0)) == 2.0
    assert float(mix_with_ce(kd, ce, 1.0)) == 4.0
    assert float(mix_with_ce(kd, ce, 0.25)) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        mix_with_ce(kd, ce, 1.5)


def test_unknown_loss_and_bad_params_raise():
    s = _logits(2, 5)
    with pytest.raises(ValueError, match="unknown loss"):
        kd_loss(s, s, loss="nope")
    with pytest.raises(ValueError):
        kd_loss(s, s, loss="jsd", beta=1.5)
    with pytest.raises(ValueError):
        kd_loss(s, s, temperature=0.0)


# --- top-k + tail bucket -------------------------------------------------------------------------


def _topk(teacher_logits, k):
    logp = F.log_softmax(teacher_logits.float(), -1)
    vals, ids = logp.topk(k, -1)
    tail = logp.scatter(-1, ids, float("-inf")).logsumexp(-1)
    return vals, ids, tail


def test_buckets_are_normalised_and_exact():
    s = _logits(5, 100, seed=23).float()
    ids = _logits(5, 100, seed=24).topk(8, -1).indices
    b = bucket_logprobs(s, ids)
    assert b.shape == (5, 9)
    torch.testing.assert_close(b.exp().sum(-1), torch.ones(5))
    full = F.log_softmax(s, -1)
    torch.testing.assert_close(b[:, :8], full.gather(-1, ids))


@pytest.mark.parametrize("loss", LOSSES)
def test_topk_with_full_k_equals_full_vocabulary_loss(loss):
    s, t = _logits(6, 24, seed=25).float(), _logits(6, 24, seed=26).float()
    vals, ids, tail = _topk(t, 24)  # k = V: the tail bucket is empty
    got = topk_kd_loss(s, vals, ids, tail, loss=loss)
    torch.testing.assert_close(got, kd_loss(s, t, loss=loss), rtol=1e-4, atol=1e-5)


def test_topk_is_zero_for_identical_models_and_close_to_full_loss():
    t = _logits(16, 500, seed=27, scale=4.0).float()
    vals, ids, tail = _topk(t, 32)
    for T in (1.0, 2.0):
        assert float(topk_kd_loss(t, vals.half(), ids.to(torch.int32), tail.half(), temperature=T)) < 2e-3
    s = t + 0.5 * _logits(16, 500, seed=28).float()
    full = float(kd_loss(s, t, loss="fkl"))
    approx = float(topk_kd_loss(s, vals.half(), ids, tail.half(), loss="fkl"))
    # the bucketed KL is a coarsening of the full KL: never larger, and close when top-k hold most mass
    assert approx <= full + 1e-3
    assert approx > 0.5 * full


def test_teacher_buckets_renormalise_fp16_rounding():
    t = _logits(4, 200, seed=29).float()
    vals, _, tail = _topk(t, 16)
    b = teacher_buckets(vals.half(), tail.half())
    torch.testing.assert_close(b.exp().sum(-1), torch.ones(4))


def test_topk_gradient_matches_autograd_through_full_softmax():
    # For forward KL the bucketed gradient w.r.t. a top-k logit is q_i - p_i (like the full loss).
    s = _logits(3, 50, seed=30).float().requires_grad_(True)
    t = _logits(3, 50, seed=31).float()
    vals, ids, tail = _topk(t, 50)
    topk_kd_loss(s, vals, ids, tail, loss="fkl", reduction="sum").backward()
    expected = F.softmax(s.detach(), -1) - F.softmax(t, -1)
    torch.testing.assert_close(s.grad, expected, rtol=1e-4, atol=1e-5)


# --- chunked vocabulary projection ---------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_head_matches_plain_autograd(chunk, with_bias):
    g = torch.Generator().manual_seed(0)
    n, h, v = 11, 8, 30
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    bias = torch.randn(v, generator=g, requires_grad=True) if with_bias else None
    teacher = torch.randn(n, v, generator=g)
    targets = torch.randint(0, v, (n,), generator=g)

    def fn(logits, s, e):
        kd = kd_loss(logits, teacher[s:e], loss="jsd", beta=0.3, temperature=2.0, reduction="sum")
        ce = F.cross_entropy(logits, targets[s:e], reduction="sum")
        return 0.5 * kd + 0.5 * ce, {"ce": ce}

    stats: dict = {}
    out = chunked_head_loss(hidden, weight, bias, fn, chunk_size=chunk, stats=stats)
    out.backward()
    got = [hidden.grad.clone(), weight.grad.clone()] + ([bias.grad.clone()] if with_bias else [])
    for p in (hidden, weight, bias):
        if p is not None:
            p.grad = None
    logits = F.linear(hidden, weight, bias)
    ref, ref_stats = fn(logits, 0, n)
    ref.backward()
    want = [hidden.grad, weight.grad] + ([bias.grad] if with_bias else [])
    torch.testing.assert_close(out, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stats["ce"], ref_stats["ce"].detach(), rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_chunked_head_scales_with_upstream_gradient_and_handles_empty():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 6, generator=g, requires_grad=True)
    weight = torch.randn(10, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 10, (4,), generator=g)

    def fn(logits, s, e):
        return F.cross_entropy(logits, targets[s:e], reduction="sum"), {}

    (3.0 * chunked_head_loss(hidden, weight, None, fn, 2)).backward()
    g3 = weight.grad.clone()
    weight.grad = None
    chunked_head_loss(hidden, weight, None, fn, 2).backward()
    torch.testing.assert_close(g3, 3.0 * weight.grad)

    empty = torch.zeros(0, 6, requires_grad=True)
    z = chunked_head_loss(empty, weight, None, fn, 2)
    assert float(z) == 0.0
    z.backward()


def test_chunked_logits_matches_plain_autograd():
    from distilltune.distill.losses import chunked_logits_loss

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(9, 20, generator=g, requires_grad=True)
    teacher = torch.randn(9, 20, generator=g)

    def fn(lg, s, e):
        v = kd_loss(lg, teacher[s:e], loss="tvd", reduction="sum") + kd_loss(
            lg, teacher[s:e], reduction="sum"
        )
        return v, {"n": torch.tensor(float(e - s))}

    stats: dict = {}
    out = chunked_logits_loss(logits, fn, 4, stats)
    (2.0 * out).backward()
    got = logits.grad.clone()
    logits.grad = None
    ref, _ = fn(logits, 0, 9)
    (2.0 * ref).backward()
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(got, logits.grad)
    assert float(stats["n"]) == 9.0


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("alpha,temperature", [(0.0, 1.0), (0.5, 1.0), (0.3, 2.0), (1.0, 1.0)])
def test_closed_form_topk_gradient_matches_autograd(loss, alpha, temperature):
    from distilltune.distill.losses import topk_kd_ce_with_grad

    g = torch.Generator().manual_seed(7)
    n, v, k = 6, 80, 5
    t = torch.randn(n, v, generator=g) * 3
    vals, ids, tail = _topk(t, k)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[0] = ids[0, 0]  # one target inside the teacher's top-k, the rest mostly outside
    s = (torch.randn(n, v, generator=g) * 2).requires_grad_(True)
    kw = {"loss": loss, "temperature": temperature, "beta": 0.3, "skew": 0.2}
    kd = topk_kd_loss(s, vals.half(), ids, tail.half(), reduction="sum", **kw)
    ce = F.cross_entropy(s, targets, reduction="sum")
    ref = mix_with_ce(kd, ce, alpha)
    ref.backward()
    value, kd_v, ce_v, grad = topk_kd_ce_with_grad(
        s.detach(), vals.half(), ids, tail.half(), targets, alpha=alpha, **kw
    )
    torch.testing.assert_close(value, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kd_v, kd.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce_v, ce.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, s.grad, rtol=1e-4, atol=1e-6)


def test_chunked_head_uses_a_given_gradient():
    from distilltune.distill.losses import topk_kd_ce_with_grad

    g = torch.Generator().manual_seed(8)
    n, h, v = 7, 6, 40
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    vals, ids, tail = _topk(torch.randn(n, v, generator=g), 4)
    targets = torch.randint(0, v, (n,), generator=g)

    def closed(lg, s, e):
        value, kd, _ce, grad = topk_kd_ce_with_grad(
            lg, vals[s:e], ids[s:e], tail[s:e], targets[s:e], alpha=0.5
        )
        return value, {"kd": kd}, grad

    def auto(lg, s, e):
        kd = topk_kd_loss(lg, vals[s:e], ids[s:e], tail[s:e], reduction="sum")
        return mix_with_ce(kd, F.cross_entropy(lg, targets[s:e], reduction="sum"), 0.5), {"kd": kd}

    grads = []
    for fn in (closed, auto):
        chunked_head_loss(hidden, weight, None, fn, 3).backward()
        grads.append((hidden.grad.clone(), weight.grad.clone()))
        hidden.grad = weight.grad = None
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_closed_form_gradient_skips_ce_where_nothing_is_labelled(alpha):
    """Prompt positions (target IGNORE_INDEX) get the KD term only, in value and gradient."""
    from distilltune.distill.losses import topk_kd_ce_with_grad

    g = torch.Generator().manual_seed(9)
    n, v, k = 8, 60, 5
    vals, ids, tail = _topk(torch.randn(n, v, generator=g) * 3, k)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[:5] = IGNORE_INDEX
    s = (torch.randn(n, v, generator=g) * 2).requires_grad_(True)
    kd = topk_kd_loss(s, vals, ids, tail, reduction="sum")
    ce = F.cross_entropy(s, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    ref = mix_with_ce(kd, ce, alpha)
    ref.backward()
    value, _kd, ce_v, grad = topk_kd_ce_with_grad(s.detach(), vals, ids, tail, targets, alpha=alpha)
    torch.testing.assert_close(value, ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce_v, ce.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, s.grad, rtol=1e-4, atol=1e-6)


def test_mix_weights_average_each_term_over_its_own_positions():
    from distilltune.distill.losses import mix_weights

    a, scale = mix_weights(0.5, 10, 10)  # answer positions only: the plain mix over one count
    assert a == pytest.approx(0.5) and scale == pytest.approx(0.1)
    a, scale = mix_weights(0.5, 10, 40)
    assert scale * a == pytest.approx(0.5 / 10) and scale * (1 - a) == pytest.approx(0.5 / 40)
    assert mix_weights(0.5, 0, 40) == (0.0, pytest.approx(0.5 / 40))  # no answer tokens: KD only
    assert mix_weights(1.0, 0, 40) == (0.0, 0.0)  # nothing to learn from
    assert mix_weights(0.0, 0, 0) == (0.0, 0.0)
