"""The intensity window: one spelling, written and read back, and the two directions."""

from __future__ import annotations

import numpy as np
import pytest

from augment.contracts.window import CT_PRESETS, PERCENTILE, Window
from augment.errors import StoreError


@pytest.mark.parametrize(
    "window",
    [
        Window.preset("abdomen", *CT_PRESETS["abdomen"], units="HU"),
        Window.preset("explicit", 300, 200),
        Window(PERCENTILE, percentiles=(0.5, 99.5)),
    ],
)
def test_written_window_reads_back_equal(window):
    assert Window.from_dict(window.to_dict(), "meta.json") == window


def test_units_and_unit_range_are_inverse_and_clip_only_when_asked():
    window = Window.preset("abdomen", 40, 400, "HU")
    x = np.linspace(-1, 1, 5, dtype=np.float32)
    np.testing.assert_allclose(window.to_unit_range(window.to_units(x)), x, atol=1e-6)
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    np.testing.assert_allclose(window.to_unit_range(hu), [-1, -1, 0, 1, 1], atol=1e-6)
    assert window.to_unit_range(hu, clip=False)[-1] == pytest.approx((3000 - 40) / 200)


def test_a_window_written_before_units_were_recorded_is_hu_for_ct_presets():
    old = {"kind": "abdomen", "center": 40.0, "width": 400.0, "low": -160.0, "high": 240.0}
    assert Window.from_dict(old, "config.json").units == "HU"
    explicit = {"kind": "explicit", "center": 300, "width": 200, "low": 200, "high": 400}
    assert Window.from_dict(explicit, "config.json").units == ""


@pytest.mark.parametrize(
    "value", [None, [-1000, 400], {"kind": "abdomen"}, {"kind": "x", "low": 1, "high": 1}]
)
def test_another_spelling_or_an_empty_window_is_refused_naming_the_file(value):
    with pytest.raises(StoreError, match="config.json"):
        Window.from_dict(value, "config.json")
