"""InfoNCE, the capped weight and the combined COIN loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from coinlib.train.loss import (
    coin_loss,
    contrastive_weight,
    info_nce,
    symmetric_info_nce,
)


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


# Worked example, d = 2, tau = 0.5. Vectors are not unit length (the loss uses cosines):
#   originals ORIG O = (1,0), (0,1);  positives POS P = (3,4), (0,2);  shared negatives NEG N = (-2,0), (4,3)
# Cosines (unit vectors (1,0), (0,1) | (.6,.8), (0,1) | (-1,0), (.8,.6)):
#   O0: P0 .6  P1 0   N0 -1   N1 .8        P0: O0 .6  O1 .8  N0 -.6  N1 .96
#   O1: P0 .8  P1 1   N0 0    N1 .6        P1: O0 0   O1 1   N0 0    N1 .6
# Each loss is -logits[target] + log(sum(exp(logits))) with logits = cos / 0.5, e.g. for O0 (pool P0 P1 N0 N1):
#   -1.2 + log(e^1.2 + e^0 + e^-2 + e^1.6) = 1.0416119024
ORIG = [[1.0, 0.0], [0.0, 1.0]]
POS = [[3.0, 4.0], [0.0, 2.0]]
NEG = [[-2.0, 0.0], [4.0, 3.0]]
FWD = [1.0416119024112056, 0.8131430076929003]  # O_i -> P_i among P0, P1, N0, N1
BWD = [1.534062399783217, 0.5423240179127937]   # P_i -> O_i among O0, O1, N0, N1
PAIRED_FWD = [0.03995333316243044, 0.3711006659477776]  # O_i among (P_i, N_i) only: logits (1.2, -2), (2, 1.2)
PAIRED_BWD = [0.08683615215394958, 0.3711006659477776]  # P_i among (O_i, N_i) only: logits (1.2, -1.2), (2, 1.2)
NO_NEG = [0.2632824673380312, 0.5130152523999527]       # O_i among P0, P1: logits (1.2, 0), (1.6, 2)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_worked_example_in_batch_pool_plus_explicit_negatives():
    o, p, n = _t(ORIG), _t(POS), _t(NEG)
    assert info_nce(o, p, 0.5, n).item() == pytest.approx(sum(FWD) / 2, rel=1e-9)
    assert info_nce(p, o, 0.5, n).item() == pytest.approx(sum(BWD) / 2, rel=1e-9)
    assert info_nce(o, p, 0.5).item() == pytest.approx(sum(NO_NEG) / 2, rel=1e-9)
    assert symmetric_info_nce(o, p, 0.5, n).item() == pytest.approx(0.982785331950029, rel=1e-9)
    # per-anchor negatives [N, K=1, d] without the in-batch pool: each anchor sees its own positive and negative
    paired = symmetric_info_nce(o, p, 0.5, n[:, None, :], in_batch=False)
    assert paired.item() == pytest.approx(0.2172477043029838, rel=1e-9)
    assert paired.item() == pytest.approx((sum(PAIRED_FWD) + sum(PAIRED_BWD)) / 4, rel=1e-9)


def test_worked_example_offset_picks_the_anchor_row_of_a_gathered_pool():
    o, p, n = _t(ORIG), _t(POS), _t(NEG)
    for i in (0, 1):  # one anchor per "process", the pool holds everyone's rows
        assert info_nce(o[i:i + 1], p, 0.5, n, offset=i).item() == pytest.approx(FWD[i], rel=1e-9)
    local = symmetric_info_nce(o[1:], p[1:], 0.5, n, gathered_original=o, gathered_positive=p, offset=1)
    assert local.item() == pytest.approx((FWD[1] + BWD[1]) / 2, rel=1e-9)


def test_worked_example_weight_and_total():
    ctr = symmetric_info_nce(_t(ORIG), _t(POS), 0.5, _t(NEG))
    ce = torch.tensor(1.5, dtype=torch.float64)
    total, w = coin_loss(ce, ctr, 1000.0)  # w = 1.5 / 0.98278533 < lambda: the weighted term equals L_ent
    assert w.item() == pytest.approx(1.5262743055227745, rel=1e-6)
    assert total.item() == pytest.approx(3.0, rel=1e-6)  # the weight is computed in float32
    total, w = coin_loss(ce, ctr, 1.0)  # the cap binds: w = lambda = 1
    assert w.item() == 1.0 and total.item() == pytest.approx(1.5 + 0.982785331950029, rel=1e-6)


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
