"""Step time of each training option against the demo's recipe, alternated in one process.

The reference is the demo's ``params.yaml`` train section as a :class:`Trainer` (64x64, one image
channel and three mask channels, two classes, the local discriminator, DiffAugment translation,
batch 32, width 32); each option is that trainer with one setting changed. Progressive growing
is timed at each of its resolutions (the step counter set to a step of that phase). Inputs are
random slices and random one-hot masks: speed does not depend on the data. Example::

    python benchmarks/bench_options.py --threads 1 --steps 5 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from augment.config import TrainConfig
from augment.training.stage import build_spec
from augment.training.step import Trainer

SIZE, MASKS, CLASSES = 64, 3, 2
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
# name -> (changed settings, the step counter to time at: a phase of progressive growing)
OPTIONS: dict[str, tuple[dict, int]] = {
    # R1 on every step: the lazy default (r1_every 16) pays 1/16 of the extra.
    "r1_weight 1, r1_every 1": ({"r1_weight": 1.0, "r1_every": 1}, 0),
    "grow_from 16: at 16 px": ({"grow_from": 16}, 0),
    "grow_from 16: at 32 px": ({"grow_from": 16}, 350),
    "grow_from 16: fading in 64 px": ({"grow_from": 16}, 450),
    "grow_from 16: at 64 px": ({"grow_from": 16}, 600),
    "attention 16": ({"attention": 16}, 0),
    "hard_masks": ({"hard_masks": True}, 0),
    "ngf = ndf = 64": ({"ngf": 64, "ndf": 64}, 0),
}


def demo_config(**changes: object) -> TrainConfig:
    train = yaml.safe_load(PARAMS.read_text())["train"]
    train.update(device="cpu", **changes)
    return TrainConfig(**train)


def trainer_step(cfg: TrainConfig, at_step: int) -> Callable[[], None]:
    spec = build_spec(cfg, SIZE, 1, MASKS, CLASSES)
    trainer = Trainer(spec, cfg, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    b = cfg.batch_size
    images = torch.rand(b, 1, SIZE, SIZE, generator=gen) * 2 - 1
    labels = torch.randint(0, MASKS, (b, SIZE, SIZE), generator=gen)
    masks = F.one_hot(labels, MASKS).permute(0, 3, 1, 2).float() * 2 - 1
    real = torch.cat([images, masks], dim=1).contiguous(memory_format=torch.channels_last)
    y = torch.arange(b) % CLASSES

    def step() -> None:
        trainer.step_count = at_step  # hold the growing phase still while timing
        trainer.step(lambda: (real, y))

    return step


def _time(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=6, help="alternate every option this many times")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    steps = {"demo recipe": trainer_step(demo_config(), 0)}
    for name, (changes, at) in OPTIONS.items():
        steps[name] = trainer_step(demo_config(**changes), at)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):  # alternate, so load changes on a shared machine hit all
        for name, step in steps.items():
            times[name].append(_time(step, args.steps))
    ref = min(times["demo recipe"])
    result = {
        "threads": args.threads,
        "torch": torch.__version__,
        "demo_recipe_s_per_step": round(ref, 4),
        "ratio_to_demo_recipe": {n: round(min(t) / ref, 3) for n, t in times.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
