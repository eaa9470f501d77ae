"""Regenerate `digits.npz` from scikit-learn's bundled copy of the 8x8 UCI digits.

This is a maintainer script, not used at run time: mcomp does not depend on scikit-learn.
Run it in a separate environment that has scikit-learn and numpy installed::

    python -m venv /tmp/skvenv && /tmp/skvenv/bin/pip install scikit-learn
    /tmp/skvenv/bin/python mcomp/data/make_digits_npz.py

`load_digits()` reads files shipped inside scikit-learn, so nothing is downloaded. The output
is written next to this file. See DIGITS_LICENSE.txt for attribution and the split.
"""

from pathlib import Path

import numpy as np

N_TRAIN = 1437  # 80% of 1797; the remaining 360 samples form the eval split


def main() -> None:
    """Load the digits, split them deterministically and save a compressed npz."""
    from sklearn.datasets import load_digits  # only needed to regenerate the file

    digits = load_digits()
    # Pixels are integer intensities 0..16; scale to [0, 1] and add a channel axis (N, 1, 8, 8).
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    train, evl = perm[:N_TRAIN], perm[N_TRAIN:]
    out = Path(__file__).with_name("digits.npz")
    np.savez_compressed(out, x_train=x[train], y_train=y[train], x_eval=x[evl], y_eval=y[evl])
    print(f"wrote {out}: train {len(train)}, eval {len(evl)}")


if __name__ == "__main__":
    main()
