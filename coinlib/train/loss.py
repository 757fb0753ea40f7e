"""The COIN objective: InfoNCE over last-token hidden states plus the contrastive weight of the reference code.

    L_ctr = 1/2 [InfoNCE(h, h+ | h-) + InfoNCE(h+, h | h-)]
    InfoNCE(a, p | n)_i = -log  exp(cos(a_i, p_i)/tau) / (exp(cos(a_i, p_i)/tau) + sum_j exp(cos(a_i, n_ij)/tau))
    w = lambda                                        if lambda * L_ctr <= L_ent
    w = lambda * min(lambda, detach(L_ent / (lambda * L_ctr)))   otherwise
    L = L_ent + w * L_ctr

This is exactly what the reference code (luka-group/CoIN, ``ContrastiveLlama.scale_contrastive_loss``) does:
it multiplies L_ctr by lambda and rescales the product to the generation loss only when it exceeds it. For
lambda >= 1 that equals ``w = min(lambda, detach(L_ent / L_ctr))``: the contrastive term is scaled to the
generation loss's size and never weighted above lambda (the paper prints ``max`` but calls lambda an upper
bound). For lambda < 1 the reference differs from that cap and we reproduce it: when ``lambda * L_ctr >
L_ent`` the weight is ``min(lambda**2, L_ent / L_ctr)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float = 0.05,
             negatives: torch.Tensor | None = None, in_batch: bool = True, offset: int = 0) -> torch.Tensor:
    """InfoNCE with cosine similarity, averaged over anchors: each anchor must pick its own positive.

    Args:
        anchor: ``[N, d]`` representations.
        positive: ``[P, d]`` representations; anchor ``i``'s positive is row ``offset + i`` (``P >= N``,
            ``P > N`` when positives were gathered from other processes).
        temperature: tau; similarities are divided by it.
        negatives: optional ``[M, d]`` pool shared by all anchors, or ``[N, K, d]`` per-anchor negatives.
        in_batch: when True the other anchors' positives are negatives too (an in-batch pool); when False
            each anchor sees only its own positive and the given negatives.
        offset: index of anchor 0's positive in ``positive``.

    Returns ``mean_i -log softmax(logits_i)[positive_i]`` with logits ``cos(a_i, c) / tau`` over the candidates.
    """
    if anchor.dim() != 2 or positive.dim() != 2 or anchor.shape[-1] != positive.shape[-1]:
        raise ValueError(f"anchor and positive must be [N, d] and [P, d]; got {tuple(anchor.shape)}, {tuple(positive.shape)}")
    n = anchor.shape[0]
    if positive.shape[0] < offset + n:
        raise ValueError(f"positive has {positive.shape[0]} rows; anchors need rows {offset}..{offset + n - 1}")
    a = F.normalize(anchor, dim=-1)
    p = F.normalize(positive, dim=-1)
    own = torch.arange(n, device=anchor.device) + offset
    if in_batch:
        logits = a @ p.T  # [N, P]; column own[i] is the positive
        target = own
    else:
        logits = (a * p[own]).sum(-1, keepdim=True)  # [N, 1]
        target = torch.zeros(n, dtype=torch.long, device=anchor.device)
    if negatives is not None:
        neg = F.normalize(negatives, dim=-1)
        if neg.dim() == 2:
            extra = a @ neg.T  # [N, M]
        elif neg.dim() == 3 and neg.shape[0] == n:
            extra = torch.einsum("nd,nkd->nk", a, neg)  # [N, K]
        else:
            raise ValueError(f"negatives must be [M, d] or [N={n}, K, d]; got {tuple(negatives.shape)}")
        logits = torch.cat([logits, extra], dim=1)
    return F.cross_entropy(logits / temperature, target)


def symmetric_info_nce(original: torch.Tensor, positive: torch.Tensor, temperature: float = 0.05,
                       negatives: torch.Tensor | None = None, in_batch: bool = True,
                       gathered_original: torch.Tensor | None = None, gathered_positive: torch.Tensor | None = None,
                       offset: int = 0) -> torch.Tensor:
    """L_ctr: InfoNCE original->positive and positive->original, averaged (as the reference code does).

    ``gathered_*`` are the candidate pools (all processes' rows, this process's at ``offset``); they default to
    the local tensors.
    """
    cand_pos = positive if gathered_positive is None else gathered_positive
    cand_orig = original if gathered_original is None else gathered_original
    forward = info_nce(original, cand_pos, temperature, negatives, in_batch, offset)
    backward = info_nce(positive, cand_orig, temperature, negatives, in_batch, offset)
    return 0.5 * (forward + backward)


def contrastive_weight(ce: torch.Tensor, ctr: torch.Tensor, lam: float) -> torch.Tensor:
    """The reference code's contrastive weight ``w`` (module docstring) as a detached scalar tensor.

    ``c = lambda * L_ctr``; if ``c > L_ent`` (and ``c != 0``) then ``w = lambda * min(lambda, L_ent / c)``, else
    ``w = lambda``. For lambda >= 1 this is ``min(lambda, L_ent / L_ctr)``; for lambda < 1 it is reproduced as
    is (``min(lambda**2, L_ent / L_ctr)`` when the product exceeds L_ent). ``L_ctr == 0`` gives ``lambda``; a
    non-finite ``L_ctr`` gives 0, so the term is dropped for the step.
    """
    ce = ce.detach().float()
    ctr = ctr.detach().float()
    lam_t = torch.full_like(ctr, float(lam))
    scaled = lam_t * ctr
    rescale = (scaled != 0) & (scaled > ce)
    factor = torch.minimum(lam_t, ce / torch.where(rescale, scaled, torch.ones_like(scaled)))
    w = torch.where(rescale, lam_t * factor, lam_t)
    return torch.where(torch.isfinite(ctr) & torch.isfinite(w), w, torch.zeros_like(w))


def coin_loss(ce: torch.Tensor, ctr: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Total COIN loss ``L_ent + w * L_ctr`` and the weight ``w`` (see :func:`contrastive_weight`).

    A non-finite ``L_ctr`` is left out of the graph for the step (the total is ``L_ent``, ``w = 0``), so it can
    put NaN neither in the total nor in any gradient; a non-finite ``L_ent`` is left for the caller to report.
    """
    w = contrastive_weight(ce, ctr, lam)
    if not bool(torch.isfinite(ctr.detach()).all()):
        return ce, w
    return ce + w.to(ce.dtype) * ctr.to(ce.dtype), w


def gather_embeddings(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' rows of ``x`` concatenated in rank order, and this process's offset in the result.

    The local slice is ``x`` itself, so gradients flow to this process's rows (the other processes' rows are
    constants here; each process back-propagates its own). Without an initialised process group: ``(x, 0)``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(s) for s in sizes]
    buffers = [x.new_zeros((n, *x.shape[1:])) for n in sizes]
    dist.all_gather(buffers, x.detach().contiguous())
    buffers[rank] = x
    return torch.cat(buffers, dim=0), sum(sizes[:rank])
