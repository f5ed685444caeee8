"""The seeds a training run derives from its one seed.

A run has one seed, ``TrainConfig.seed``. Torch's global generator, seeded with it, draws the
initial weights; everything else random in a run draws from generators of its own, each seeded
with ``derive_seed(seed, purpose, index)``:

    "data order"   the order of the images in epoch ``index`` (1, 2, ...): it depends on (seed,
                   epoch) only, so a resumed run, and every process under torchrun, sees the same
    "noise shard"  t, eps and the dropped labels of noise shard ``index`` (1, 2, ...); shard 0
                   draws from the run's seed itself, as a single process does (``distributed.py``)

Each purpose steps from seed * 1,000,003 by a stride of its own. These are the seeds every run of
the package has drawn from, so a run trained again reproduces its weights bit for bit.
"""

from __future__ import annotations

SEED_STRIDE = 1_000_003  # a prime: two seeds' derived seeds meet only for indices of a million or more
PURPOSE_STRIDES = {"data order": 1, "noise shard": 7_919}


def derive_seed(seed: int, purpose: str, index: int) -> int:
    """The seed of the ``index``-th generator for ``purpose`` (a key of ``PURPOSE_STRIDES``) in the run seeded
    with ``seed``: seed * 1,000,003 + stride * index."""
    return seed * SEED_STRIDE + PURPOSE_STRIDES[purpose] * index
