"""Worker for the two-process (gloo) gather test; imports only torch and coinlib.train.loss, so spawning is quick."""

from __future__ import annotations

import os
import socket

import torch

from coinlib.train.loss import gather_embeddings, symmetric_info_nce


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(rank: int, world: int, port: int, out_dir: str) -> None:
    """Rank ``rank`` holds rows 2*rank..2*rank+1 of seeded embeddings; saves what it gathered and its loss."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    o_all, p_all, n_all = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    sl = slice(2 * rank, 2 * rank + 2)
    o, p, n = (t[sl].clone().requires_grad_() for t in (o_all, p_all, n_all))
    go, offset = gather_embeddings(o)
    gp, _ = gather_embeddings(p)
    gn, _ = gather_embeddings(n)
    loss = symmetric_info_nce(o, p, 0.05, gn, True, go, gp, offset)
    torch.save({"offset": offset, "go": go.detach(), "gp": gp.detach(), "gn": gn.detach(), "loss": loss.detach()},
               f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()
