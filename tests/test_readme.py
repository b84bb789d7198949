"""The README's examples run as written (with fewer training steps)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_notebook_example_runs(tmp_path, monkeypatch):
    (block,) = [b for b in _python_blocks() if "from augment" in b]
    monkeypatch.chdir(tmp_path)  # a fresh folder, as on a fresh clone: nothing prepared
    monkeypatch.delenv("AUGMENT_PSEUDONYM_KEY", raising=False)
    quick = block.replace(
        "TrainConfig(steps=1000)", "TrainConfig(steps=3, ngf=8, ndf=8, batch_size=8)"
    ).replace("PhantomsConfig(patients=8,", "PhantomsConfig(patients=6, size=64, slices=8,")
    assert quick.count("steps=3") == 1 and "patients=6" in quick, (
        "the README example no longer configures training and phantoms as this test expects"
    )
    scope: dict = {}
    exec(compile(quick, str(README), "exec"), scope)  # the README's own example
    synthetic = scope["synthetic"]
    assert synthetic.images.shape == (500, 1, 64, 64)
    assert synthetic.images.min() >= -1 and synthetic.images.max() <= 1
