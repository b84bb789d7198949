"""The README's examples run as written (with fewer training steps)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from augment.config import PhantomsConfig
from augment.phantoms.stage import make_phantoms

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_notebook_example_runs(tmp_path, monkeypatch):
    (block,) = [b for b in _python_blocks() if "from augment" in b]
    monkeypatch.chdir(tmp_path)
    make_phantoms(PhantomsConfig(patients=6, size=64, slices=8), tmp_path / "data" / "raw")
    monkeypatch.setenv("AUGMENT_PSEUDONYM_KEY", "test")
    quick = block.replace(
        "TrainConfig(steps=1000)", "TrainConfig(steps=3, ngf=8, ndf=8, batch_size=8)"
    )
    assert quick != block, "the README example no longer configures training as this test expects"
    scope: dict = {}
    exec(compile(quick, str(README), "exec"), scope)  # the README's own example
    synthetic = scope["synthetic"]
    assert synthetic.images.shape == (500, 1, 64, 64)
    assert synthetic.images.min() >= -1 and synthetic.images.max() <= 1
