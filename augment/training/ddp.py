"""Several processes (torchrun): process-group setup, batch norm synchronised over processes.

CUDA runs use ``nn.SyncBatchNorm``; CPU (gloo) runs use :class:`GlooSyncBatchNorm`, since
``nn.SyncBatchNorm`` needs CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

M = TypeVar("M", bound=nn.Module)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every process's loss flows back to each input."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return _AllReduceSum.apply(grad)  # itself differentiable: the GP's double backward


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm with statistics all-reduced over processes, for CPU (gloo) runs.

    ``nn.SyncBatchNorm`` needs CUDA; this computes per-channel sums and sums of squares, reduces
    them with a differentiable all-reduce (so gradients flow through the shared statistics
    too), and normalises with the global mean and variance.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        c = x.shape[1]
        count = torch.full((1,), x.numel() / c, dtype=x.dtype, device=x.device)
        local = torch.cat([x.sum(dim=(0, 2, 3)), x.pow(2).sum(dim=(0, 2, 3)), count])  # (2C+1,)
        total = _AllReduceSum.apply(local)
        n = total[-1]
        mean = total[:c] / n  # (C,)
        var = (total[c : 2 * c] / n - mean.pow(2)).clamp_min(0)  # (C,) biased
        if self.track_running_stats:
            tracked = self.num_batches_tracked
            run_mean, run_var = self.running_mean, self.running_var
            if tracked is None or run_mean is None or run_var is None:
                raise RuntimeError("track_running_stats is set, but the running buffers are None")
            with torch.no_grad():
                tracked += 1  # in place: the buffer itself
                f = self.momentum if self.momentum is not None else 1 / tracked
                run_mean.lerp_(mean.detach(), float(f))
                run_var.lerp_(var.detach() * n / (n - 1).clamp_min(1), float(f))
        out = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def _swap_batchnorm(module: M, kind: type[nn.Module], match: tuple[type, ...]) -> M:
    """Replace, in place, the batch norms of ``module`` (at any depth) of a type in ``match``."""
    for name, child in module.named_children():
        if isinstance(child, match) and type(child) is not kind:
            bn = kind(child.num_features, child.eps, child.momentum, child.affine)
            bn.load_state_dict(child.state_dict())
            running_mean = child.running_mean
            if not isinstance(running_mean, Tensor):
                raise TypeError(
                    f"{name}: a batch norm without running statistics cannot be swapped"
                )
            setattr(module, name, bn.to(running_mean.device))
        else:
            _swap_batchnorm(child, kind, match)
    return module


def sync_batchnorm(module: M, cuda: bool) -> M:
    """The batch norms of ``module`` (at any depth) synchronised over processes, in place."""
    if cuda:
        # What convert_sync_batchnorm(module) does for a module that is no batch norm itself,
        # keeping the module (and its type) rather than returning a plain nn.Module.
        for name, child in module.named_children():
            module.add_module(name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        return module
    return _swap_batchnorm(module, GlooSyncBatchNorm, (nn.BatchNorm2d,))


def plain_batchnorm(module: M) -> M:
    """Synchronised batch norms -> BatchNorm2d (recalibration runs in one process)."""
    return _swap_batchnorm(module, nn.BatchNorm2d, (nn.SyncBatchNorm, GlooSyncBatchNorm))


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this call initialised the process group and must destroy it

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_setup(device_name: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owned = not dist.is_initialized()
    if owned:
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                 owned)  # fmt: skip


def check_replicas(g: nn.Module) -> None:
    """DDP keeps replicas equal; a mismatch would mean rank 0 saved a model others never had."""
    flat = torch.cat([p.detach().flatten().double() for p in g.parameters()])
    mine = torch.stack([flat.sum(), (flat * torch.arange(len(flat), device=flat.device)).sum()])
    ref = mine.clone()
    dist.broadcast(ref, src=0)
    if not torch.allclose(mine, ref, rtol=1e-9, atol=1e-9):
        raise RuntimeError("DDP replicas of the generator disagree after training")
