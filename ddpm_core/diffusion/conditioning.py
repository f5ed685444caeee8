"""The rules of a conditional and an unconditional network, in one place.

An unconditional network (``UNetConfig(num_classes=None)``) learns eps_theta(x_t, t) and draws
whatever digit its noise leads to: it takes no labels and no guidance. A conditional one
(``num_classes=10``) learns eps_theta(x_t, t, y) and, from the images whose label was dropped to
"no class" (``null_label``), the unconditional prediction too (Ho and Salimans 2022). It is
asked for one class per sample; classifier-free guidance of weight w mixes its two predictions,
and w = 0 reads only the unconditional one, so it needs no label.

``sampling_labels`` applies these rules to a request and returns the labels to sample with;
the samplers, the command line, the evaluation and the export all ask it, with the words of
their own interface (``PYTHON`` or ``COMMAND_LINE``) in its messages. ``guided_eps`` is the
guided prediction that every sampler uses in place of eps_theta(x_t, t) (chapter 9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ddpm_core.utils.errors import DDPMError

Labels = int | Sequence[int] | Tensor | None  # the class asked of every sample, or one class each


@dataclass(frozen=True)
class Spelling:
    """How an interface names the request's parts, for the messages."""

    labels: str
    guidance: str
    train_conditional: str


PYTHON = Spelling("labels=", "guidance=", "a network built with UNetConfig(num_classes=10) and trained with labels")
COMMAND_LINE = Spelling("--label/--labels", "--guidance", "a checkpoint of `python -m ddpm_core train --conditional`")


def sampling_labels(
    num_classes: int | None,
    labels: Labels,
    guidance: float | None,
    num_samples: int,
    spelling: Spelling = PYTHON,
    source: str = "This model",
) -> Tensor | None:
    """The labels to sample with, (N,), or None for an unconditional network, after the rules above.

    ``guidance`` None means the default, w = 1. A conditional network asked for no label is refused,
    unless w = 0, which reads only the "no class" prediction: it then gets label 0 for every sample,
    which w = 0 never reads. ``source`` names the model in the messages.
    """
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or not math.isfinite(guidance) or guidance < 0):
        raise DDPMError(f"guidance must be a finite number >= 0 (0: unconditional, 1: conditional), got {guidance!r}.")
    if num_classes is None:
        if labels is not None or guidance not in (None, 1.0):
            refused = spelling.labels if labels is not None else spelling.guidance
            raise DDPMError(
                f"{source} is an unconditional model (trained without labels), so {refused} cannot apply: it draws "
                f"whatever digit its noise leads to. Sample without {spelling.labels} and {spelling.guidance}, or "
                f"use {spelling.train_conditional}."
            )
        return None
    if labels is None:
        if guidance == 0:
            return torch.zeros(num_samples, dtype=torch.long)
        given = f" with {spelling.guidance} {guidance:g}" if guidance is not None else ""
        raise DDPMError(
            f"{source} is a conditional model ({num_classes} classes), asked for no digit{given}: say which digit "
            f"each sample should be with {spelling.labels} (one class for all samples, or one per sample), and "
            f"optionally {spelling.guidance} (default 1). For unconditional samples from it, pass "
            f"{spelling.guidance} 0 instead, without a label."
        )
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if labels.numel() == 1:
        labels = labels.expand(num_samples)
    if labels.numel() != num_samples:
        raise DDPMError(
            f"Pass one label for all samples or one per sample: {labels.numel()} labels for {num_samples} samples."
        )
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        bad = int(labels.max()) if int(labels.max()) >= num_classes else int(labels.min())
        raise DDPMError(
            f"The label {bad} is not a class of {source[0].lower() + source[1:]}, which knows the classes "
            f"0..{num_classes - 1}. Pass labels in that range."
        )
    return labels.clone()


def guided_eps(
    model: Callable[..., Tensor],
    x: Tensor,
    t: Tensor,
    labels: Tensor | None = None,
    guidance: float = 1.0,
) -> Tensor:
    """The noise prediction of classifier-free guidance (Ho and Salimans 2022, eq. (6)):

        eps = eps_theta(x_t, t) + w (eps_theta(x_t, t, y) - eps_theta(x_t, t))

    with w = ``guidance``: 0 is the network's unconditional prediction, 1 its plain
    conditional one, and w > 1 pushes x_t further towards what makes it class y. For
    0 < w != 1 the two predictions come from one call on a doubled batch. Without
    ``labels`` this is eps_theta(x_t, t).
    """
    if labels is None:
        return model(x, t)
    if guidance == 1.0:
        return model(x, t, labels)
    null = torch.full_like(labels, model.null_label)  # the "no class" label
    if guidance == 0.0:
        return model(x, t, null)
    # one call on the doubled batch: first half conditional, second half "no class"
    doubled = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
    eps_cond, eps_uncond = doubled.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def training_labels(labels: Tensor | None, num_images: int, num_classes: int | None) -> Tensor | None:
    """The labels a network trains on: one class per image for a conditional one, None for an unconditional one."""
    if num_classes is None:
        return None  # an unconditional network never sees them
    if labels is None:
        raise DDPMError(
            f"A conditional network (num_classes={num_classes}) trains on labelled images: pass labels= with one "
            f"class per image, or train an unconditional network (num_classes=None)."
        )
    if labels.shape != (num_images,):
        raise DDPMError(f"labels must have one entry per image, shape ({num_images},), got {tuple(labels.shape)}.")
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise DDPMError(
            f"labels must lie in 0..{num_classes - 1} for num_classes={num_classes}, got "
            f"{int(labels.min())}..{int(labels.max())}."
        )
    return labels


def require_unconditional(num_classes: int | None, path: object, why: str) -> None:
    """Refuse a conditional network where only eps_theta(x_t, t) can be used; ``why`` says where."""
    if num_classes is not None:
        raise DDPMError(
            f"{path} is a class-conditional model ({num_classes} classes); {why}. Use an unconditional "
            f"checkpoint, such as book/checkpoints/ddpm_mnist.safetensors."
        )



MNIST_CLASSES = 10  # the digits 0..9: the classes of a conditional network trained on MNIST's labels


def class_cycle(num_classes: int, num_samples: int) -> Tensor:
    """The labels that ask for each class in turn: sample i asks for class i mod ``num_classes``."""
    return torch.arange(num_samples) % num_classes


def class_rows(num_classes: int, num_samples: int) -> Tensor:
    """The labels of a grid with one row per class: the first ``num_samples / num_classes`` samples ask
    for class 0, the next as many for class 1, and so on."""
    if num_samples % num_classes:
        raise DDPMError(f"A grid of one row per class needs a multiple of {num_classes} samples, got {num_samples}.")
    return torch.arange(num_classes).repeat_interleave(num_samples // num_classes)


def every_class(num_classes: int | None, num_samples: int, source: str = "This model",
                count: str = "num_samples") -> Tensor | None:
    """The labels with which a measurement asks a conditional network for every class (``class_cycle``);
    None for an unconditional network.

    The per-class measures compare at least two samples of a class, so fewer than two per class are
    refused; ``count`` names the number of samples in the caller's interface.
    """
    if num_classes is None:
        return None
    if num_samples < 2 * num_classes:
        raise DDPMError(
            f"{source} is a conditional model, measured on at least 2 samples of each of its {num_classes} "
            f"classes (sample i asks for class i mod {num_classes}): pass {count} {2 * num_classes} or more, "
            f"got {num_samples}."
        )
    return class_cycle(num_classes, num_samples)
