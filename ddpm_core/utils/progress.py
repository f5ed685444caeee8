"""The progress of one training epoch: a bar over its steps and the running mean of the loss.

Both training loops of the package, the diffusion model's (``training.py``) and the judge's
(``classifier.py``), report an epoch the same way through ``EpochProgress``.
"""

from __future__ import annotations

from tqdm.auto import tqdm


class EpochProgress:
    """Counts the steps of an epoch and the images' summed loss; the bar shows their mean every 20 steps."""

    def __init__(self, steps: int, desc: str, enabled: bool = True) -> None:
        self.total, self.seen, self.steps = 0.0, 0, 0
        self._bar = tqdm(total=steps, desc=desc, disable=not enabled, leave=False)

    def add(self, mean_loss: float, images: int) -> None:
        """One step whose loss, averaged over its ``images`` images, was ``mean_loss``."""
        self.total += mean_loss * images
        self.seen += images
        self._bar.update()
        if self.steps % 20 == 0:
            self._bar.set_postfix(loss=f"{self.mean:.4f}")
        self.steps += 1

    @property
    def mean(self) -> float:
        return self.total / self.seen

    def close(self) -> None:
        self._bar.close()
