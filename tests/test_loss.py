"""InfoNCE, the capped weight and the combined COIN loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from coinlib.train.loss import coin_loss, contrastive_weight, info_nce, symmetric_info_nce


def _e(deg: float) -> list[float]:
    r = math.radians(deg)
    return [math.cos(r), math.sin(r)]


def test_info_nce_hand_computed_in_batch():
    # cos(a0,p0)=1, cos(a0,p1)=0; cos(a1,p1)=cos(60deg)=0.5, cos(a1,p0)=cos(30deg)
    a = torch.tensor([_e(0), _e(30)])
    p = torch.tensor([_e(0), _e(90)])
    tau = 0.5
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(0)))
    c30 = math.cos(math.radians(30))
    l1 = -math.log(math.exp(0.5 / tau) / (math.exp(0.5 / tau) + math.exp(c30 / tau)))
    assert info_nce(a, p, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_info_nce_scale_invariant_and_per_anchor_negatives():
    a = torch.tensor([_e(0)])
    p = torch.tensor([_e(20)])
    n = torch.tensor([[_e(80), _e(-40)]])  # [N=1, K=2, d]
    tau = 0.1
    sims = [math.cos(math.radians(d)) / tau for d in (20, 80, 40)]
    expected = -sims[0] + math.log(sum(math.exp(s) for s in sims))
    assert info_nce(a, p, tau, n, in_batch=False).item() == pytest.approx(expected, rel=1e-6)
    # cosine similarity: rescaling the vectors changes nothing
    assert info_nce(3 * a, 0.2 * p, tau, 7 * n, in_batch=False).item() == pytest.approx(expected, rel=1e-6)
    # a shared [M, d] pool gives the same value for one anchor
    assert info_nce(a, p, tau, n[0], in_batch=False).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_offset_selects_positive_in_gathered_pool():
    torch.manual_seed(0)
    a, p = torch.randn(4, 8), torch.randn(4, 8)
    full = info_nce(a, p, 0.05)
    halves = [info_nce(a[i:i + 2], p, 0.05, offset=i) for i in (0, 2)]
    assert torch.stack(halves).mean().item() == pytest.approx(full.item(), rel=1e-6)


def test_symmetric_is_mean_of_both_directions():
    torch.manual_seed(1)
    o, p, n = torch.randn(3, 5), torch.randn(3, 5), torch.randn(3, 5)
    expected = 0.5 * (info_nce(o, p, 0.05, n) + info_nce(p, o, 0.05, n))
    assert symmetric_info_nce(o, p, 0.05, n).item() == pytest.approx(expected.item(), rel=1e-6)


def test_info_nce_gradcheck():
    torch.manual_seed(0)
    a = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    p = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    n = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, p, n: info_nce(a, p, 0.3, n), (a, p, n))
    assert torch.autograd.gradcheck(lambda a, p, n: symmetric_info_nce(a, p, 0.3, n[:, 0]), (a, p, n))


def test_info_nce_shape_errors_are_clear():
    with pytest.raises(ValueError, match="negatives must be"):
        info_nce(torch.randn(2, 4), torch.randn(2, 4), 0.1, torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="anchors need rows"):
        info_nce(torch.randn(2, 4), torch.randn(2, 4), 0.1, offset=1)


def test_weight_is_capped_ratio_and_detached():
    ce = torch.tensor(2.0, requires_grad=True)
    ctr = torch.tensor(0.5, requires_grad=True)
    w = contrastive_weight(ce, ctr, lam=1000)
    assert w.item() == pytest.approx(4.0) and not w.requires_grad
    assert contrastive_weight(ce, ctr, lam=3).item() == pytest.approx(3.0)


def test_lambda_limits():
    ce, ctr = torch.tensor(1.7), torch.tensor(0.01)
    # tiny lambda: the cap binds, the weight is lambda
    assert contrastive_weight(ce, ctr, 1e-3).item() == pytest.approx(1e-3)
    # huge lambda: the weighted term matches the generation loss's magnitude
    total, w = coin_loss(ce, ctr, 1e8)
    assert (w * ctr).item() == pytest.approx(ce.item(), rel=1e-5)
    assert total.item() == pytest.approx(2 * ce.item(), rel=1e-5)


def test_total_gradient_is_ce_grad_plus_w_times_ctr_grad():
    x = torch.tensor(1.5, requires_grad=True)
    y = torch.tensor(0.5, requires_grad=True)
    ce, ctr = x ** 2, y ** 2  # 2.25, 0.25 -> w = min(10, 9) = 9
    total, w = coin_loss(ce, ctr, 10.0)
    total.backward()
    assert w.item() == pytest.approx(9.0)
    assert x.grad.item() == pytest.approx(2 * 1.5)  # the weight is a constant: no gradient through it
    assert y.grad.item() == pytest.approx(9.0 * 2 * 0.5)


@pytest.mark.parametrize("bad", [0.0, float("nan"), float("inf")])
def test_zero_or_nonfinite_contrastive_loss_keeps_total_finite(bad):
    x = torch.tensor(1.5, requires_grad=True)
    y = torch.tensor(1.0, requires_grad=True)
    ce = x ** 2
    ctr = y * bad
    total, w = coin_loss(ce, ctr, 1000.0)
    assert torch.isfinite(total) and total.item() == pytest.approx(2.25)
    total.backward()
    assert x.grad.item() == pytest.approx(3.0)
    assert y.grad is None or torch.isfinite(y.grad)
    assert w.item() == (1000.0 if bad == 0.0 else 0.0)
