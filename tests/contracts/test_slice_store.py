"""SliceStore round trip and the whole-or-nothing rule of atomic outputs."""

import os

import numpy as np
import pytest

from augment.contracts.slice_store import SliceStore, SliceStoreWriter
from augment.errors import StoreError
from augment.io.atomic import atomic_dir, atomic_file


def _rows(n, split="train", patient="P1"):
    return [{"patient": patient, "source": f"{patient}/s", "z": i, "label": i % 2, "split": split}
            for i in range(n)]  # fmt: skip


def test_write_then_read_gives_the_same_slices(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.uniform(-1, 1, (5, 8, 8)).astype(np.float32)
    masks = (rng.uniform(size=(5, 8, 8)) > 0.5).astype(np.uint8)
    with SliceStoreWriter(tmp_path / "s", size=8, with_masks=True) as w:
        w.add(imgs[:3], masks[:3], _rows(3))
        w.add(imgs[3:], masks[3:], _rows(2, split="test", patient="P2"))
        w.meta["class_names"] = ["normal", "lesion"]
    store = SliceStore.open(tmp_path / "s")
    assert store.images.shape == (5, 1, 8, 8) and store.images.dtype == np.float16
    np.testing.assert_allclose(store.images[:, 0], imgs, atol=1e-3)
    np.testing.assert_array_equal(store.masks[:, 0], masks)
    assert store.indices("train").tolist() == [0, 1, 2]
    assert store.patients("test") == ["P2"]
    assert store.meta["counts"]["patients"] == {"train": 1, "val": 0, "test": 1}
    assert store.meta["counts"]["slices"]["train"] == {"0": 2, "1": 1}


def test_failed_write_leaves_nothing_and_keeps_the_old_store(tmp_path):
    target = tmp_path / "s"
    with SliceStoreWriter(target, size=4, with_masks=False) as w:
        w.add(np.zeros((1, 4, 4)), None, _rows(1))
    with pytest.raises(ValueError, match="within"), SliceStoreWriter(target, 4, False) as w:
        w.add(np.full((1, 4, 4), 3.0), None, _rows(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert SliceStore.open(target).images.shape == (1, 1, 4, 4)


def test_empty_store_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no slices"), SliceStoreWriter(tmp_path / "s", 4, False):
        pass
    assert not (tmp_path / "s").exists()


def test_open_names_what_is_missing(tmp_path):
    with pytest.raises(StoreError, match="images.npy is missing"):
        SliceStore.open(tmp_path)


def test_atomic_dir_refuses_existing_without_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError), atomic_dir(tmp_path / "out", overwrite=False):
        pass


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError
    assert target.read_text() == "old"
    with atomic_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_outputs_get_ordinary_permissions(tmp_path):
    with atomic_dir(tmp_path / "d") as d:
        (d / "x").write_text("1")
    with atomic_file(tmp_path / "f") as f:
        f.write_text("1")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: (d / "meta.json").write_text("{bad"), "meta.json: not valid JSON"),
        (lambda d: (d / "images.npy").write_bytes(b"\x93NUMPY"), "images.npy: not a readable"),
        (lambda d: (d / "slices.csv").write_text("patient,source,z,label,split\nP,s,x,0,train\n"),
         "slices.csv: expected integer z and label"),
    ],
)  # fmt: skip
def test_a_damaged_store_is_a_store_error_naming_the_file(tmp_path, damage, needle):
    with SliceStoreWriter(tmp_path / "s", size=4, with_masks=False) as w:
        w.add(np.zeros((1, 4, 4)), None, _rows(1))
    damage(tmp_path / "s")
    with pytest.raises(StoreError, match=needle):
        SliceStore.open(tmp_path / "s")


def test_leftovers_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)  # that process has exited
    stale = [tmp_path / f".out.tmp-{pid}-abc", tmp_path / f".out.tmp-{pid}-spool-x",
             tmp_path / f".out.old-{pid}"]  # fmt: skip
    for path in stale:
        path.mkdir()
        (path / "big.npy").write_bytes(b"x" * 100)
    mine = tmp_path / f".out.tmp-{os.getppid()}-live"  # a running process (pytest's parent)
    mine.mkdir()
    other = tmp_path / ".other.tmp-1-x"
    other.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "f").write_text("ok")
    assert not any(p.exists() for p in stale)
    assert mine.exists() and other.exists()


def test_a_second_writer_into_the_same_new_output_is_refused(tmp_path):
    target = tmp_path / "synthetic"
    refused = pytest.raises(FileExistsError, match="another run wrote it meanwhile")
    with refused, atomic_dir(target, overwrite=False) as first:
        (first / "a").write_text("first")
        with atomic_dir(target, overwrite=False) as second:  # starts before the first ends
            (second / "b").write_text("second")
        # the second finished first: the first must not replace it
    assert (target / "b").read_text() == "second" and not (target / "a").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synthetic")]
