"""One DCGAN training step at 64x64, batch 128, ngf = ndf = 64, one channel, two ways.

(a) a reference eager loop in the style of the canonical PyTorch DCGAN example (BN in D,
    BCE on probabilities, separate real and fake D passes, Adam 2e-4 / 0.5), written here;
(b) augment's own step (:class:`augment.training.stage.Trainer`: spectral-norm D on one concatenated
    batch, BCE on logits, EMA update; bf16 autocast, channels_last and fused Adam on CUDA).

Both run on the same device in the same process; the ratio reference / augment is reported
(> 1: augment is faster). Example::

    python benchmarks/bench_train.py --device cpu --steps 5
    python benchmarks/bench_train.py --device cuda --steps 200 --compile
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from augment.config import TrainConfig
from augment.nets.dcgan import DCGANSpec
from augment.training.step import Trainer

NZ, SIZE = 100, 64


class RefG(nn.Module):
    """The example's generator: z (B, nz, 1, 1) -> (B, 1, 64, 64)."""

    def __init__(self, ngf: int) -> None:
        super().__init__()

        def up(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU(True)]  # fmt: skip

        self.net = nn.Sequential(
            nn.ConvTranspose2d(NZ, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),  # (B, 8ngf, 4, 4)
            *up(ngf * 8, ngf * 4), *up(ngf * 4, ngf * 2), *up(ngf * 2, ngf),  # (B, ngf, 32, 32)
            nn.ConvTranspose2d(ngf, 1, 4, 2, 1, bias=False), nn.Tanh(),  # (B, 1, 64, 64)
        )  # fmt: skip

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class RefD(nn.Module):
    """The example's discriminator: (B, 1, 64, 64) -> (B,) probabilities."""

    def __init__(self, ndf: int) -> None:
        super().__init__()

        def down(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out),
                    nn.LeakyReLU(0.2, True)]  # fmt: skip

        self.net = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),  # (B, ndf, 32, 32)
            *down(ndf, ndf * 2), *down(ndf * 2, ndf * 4), *down(ndf * 4, ndf * 8),  # 4x4
            nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid(),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).view(-1)


def reference_step(device: torch.device, batch: int, width: int) -> Callable[[Tensor], None]:
    """The example's loop body: D on real, D on fake.detach(), then G through D."""
    g, d = RefG(width).to(device), RefD(width).to(device)
    for m in (*g.modules(), *d.modules()):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCELoss()
    ones = torch.ones(batch, device=device)
    zeros = torch.zeros(batch, device=device)

    def step(real: Tensor) -> None:
        d.zero_grad()
        err_real = bce(d(real), ones)
        err_real.backward()
        fake = g(torch.randn(batch, NZ, 1, 1, device=device))
        err_fake = bce(d(fake.detach()), zeros)
        err_fake.backward()
        opt_d.step()
        g.zero_grad()
        err_g = bce(d(fake), ones)
        err_g.backward()
        opt_g.step()

    return step


def augment_step(
    device: torch.device, batch: int, width: int, compile_: bool
) -> Callable[[Tensor], None]:
    """augment's Trainer.step, unconditional, no masks, no augmentation (like the reference)."""
    cfg = TrainConfig(ngf=width, ndf=width, nz=NZ, batch_size=batch, conditional=False,
                      compile=compile_, device=str(device))  # fmt: skip
    spec = DCGANSpec(image_size=SIZE, nz=NZ, ngf=width, ndf=width)
    trainer = Trainer(spec, cfg, device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)

    def step(real: Tensor) -> None:
        trainer.step(lambda: (real, labels))

    return step


def _time(step: Callable[[Tensor], None], real: Tensor, steps: int, warmup: int) -> float:
    sync = torch.cuda.synchronize if real.is_cuda else (lambda: None)
    for _ in range(warmup):
        step(real)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(real)
    sync()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=int, default=64, help="ngf = ndf")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternate a/b this many times")
    p.add_argument("--compile", action="store_true", help="torch.compile augment's networks")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    real = torch.rand(args.batch, 1, SIZE, SIZE, device=device) * 2 - 1
    ref = reference_step(device, args.batch, args.width)
    ours = augment_step(device, args.batch, args.width, args.compile)
    t_ref, t_ours = [], []
    for _ in range(args.rounds):  # alternate, so load changes on a shared machine hit both
        t_ref.append(_time(ref, real, args.steps, args.warmup))
        t_ours.append(_time(ours, real, args.steps, args.warmup))
    a, b = min(t_ref), min(t_ours)
    result = {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "width": args.width,
        "reference_ms": round(a * 1e3, 2),
        "augment_ms": round(b * 1e3, 2),
        "speedup": round(a / b, 3),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
