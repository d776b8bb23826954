"""Split assignment: stratified by label and grouped by patient, so no patient spans splits."""

from __future__ import annotations

import numpy as np

from medfuse.core.errors import DataError


def group_stratified_split(
    labels: np.ndarray, groups: np.ndarray | None, fractions: tuple[float, float], seed: int
) -> np.ndarray:
    """Return a per-sample array of 'train' / 'val' / 'test'.

    ``fractions`` is (val, test). With groups, whole groups are assigned, keeping each split's
    label mix close to the overall one (scikit-learn's StratifiedGroupKFold picks the folds).
    """
    # lazy: scikit-learn, only for this metric
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    n = len(labels)
    y = labels if labels.ndim == 1 else labels.argmax(1)
    y = np.asarray(y).astype(int)
    out = np.array(["train"] * n, dtype=object)
    val_f, test_f = fractions
    remaining = np.arange(n)
    for name, frac in (("test", test_f), ("val", val_f / max(1e-9, 1 - test_f))):
        if frac <= 0 or len(remaining) < 2:
            continue
        k = max(2, int(round(1 / frac)))
        ys = y[remaining]
        min_class = np.bincount(ys).min() if len(np.unique(ys)) > 1 else len(ys)
        if groups is not None:
            have = len(np.unique(groups[remaining]))
            if have < k:
                raise DataError(
                    f"{have} distinct patients for {len(remaining)} rows: drawing a {name} "
                    f"split of {frac:.0%} of them by patient needs at least {k}"
                )
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            parts = cv.split(remaining, ys, groups[remaining])
        elif min_class >= k:
            parts = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(
                remaining, ys
            )
        else:
            rng = np.random.default_rng(seed)
            perm = rng.permutation(len(remaining))
            m = max(1, int(round(frac * len(remaining))))
            parts = iter([(perm[m:], perm[:m])])
        _, held = next(iter(parts))
        out[remaining[held]] = name
        remaining = np.setdiff1d(remaining, remaining[held])
    return out
