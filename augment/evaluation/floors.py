"""Floors: untrained shortcut predictors every arm is read against.

A downstream model that does not beat "how much bright tissue is in the slice" has learned no
lesion, whatever its AUC looks like. The floors here use no image learning at all: one number
per slice (the share of bright pixels, the mean intensity, the share of body) or a linear probe
on the fixed random-network features (:mod:`augment.nets.features`). Each is mapped to the
task's classes by a logistic regression fitted on the real training slices only (the same
patients every arm gets), so even the sign of a shortcut is never chosen on test data.
"""

from __future__ import annotations

import numpy as np

BRIGHT = 0.2  # store units ([-1, 1]): above this is dense soft tissue or brighter
BODY = -0.9  # store units: above this is not air

SHORTCUTS = ("intensity_share", "mean_intensity", "body_share")


def shortcut_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """One number per slice for each shortcut: name -> (n,).

    Args:
        images: (n, C, S, S) slices in [-1, 1] (every channel counts).
    """
    flat = np.asarray(images, np.float32).reshape(len(images), -1)  # (n, C*S*S)
    return {
        "intensity_share": (flat > BRIGHT).mean(axis=1),
        "mean_intensity": flat.mean(axis=1),
        "body_share": (flat > BODY).mean(axis=1),
    }


def fit_probe(
    train_x: np.ndarray, train_y: np.ndarray, n_classes: int, *apply_to: np.ndarray
) -> list[np.ndarray]:
    """Fit a class-balanced logistic regression on train, return class probabilities elsewhere.

    Args:
        train_x: (n, d) training features (one column for a one-number shortcut).
        train_y: (n,) class ids.
        n_classes: number of classes K (columns of the output, even if one is absent in train).
        apply_to: (m, d) feature arrays to predict.

    Returns:
        One (m, K) probability array per ``apply_to`` array; NaN rows where a slice's features
        are not finite (a damaged slice gets no made-up score).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    present = np.unique(train_y)
    if len(present) < 2:  # nothing to fit: a constant predictor
        return [np.full((len(x), n_classes), 1.0 / n_classes) for x in apply_to]
    model = make_pipeline(
        StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000, C=1.0)
    )
    model.fit(np.asarray(train_x, np.float64), train_y)
    out = []
    for x in apply_to:
        x = np.asarray(x, np.float64)
        ok = np.isfinite(x).all(axis=1)
        prob = np.full((len(x), n_classes), np.nan)
        prob[ok] = 0.0
        if ok.any():
            prob[np.ix_(ok, present)] = model.predict_proba(x[ok])
        out.append(prob)
    return out
