"""The supervised comparison's targets: what replaces the teacher's head outputs when
``supervised: true`` (dinopl's ``--s_mode supervised`` with its target wrappers).

Four kinds, each a logit vector per image that the student matches through the dino loss:

* labels (default): ``label_logit`` at the label's index of ``out_dim``, 0 elsewhere, after a
  ``label_noise`` fraction of labels is replaced by uniformly random classes (dinopl's
  ``LabelNoiseWrapper``: a replaced label may draw its own class again);
* ``logit_noise_kind: additive``: those one-hot logits plus Gaussian noise of std ``logit_noise``;
* ``logit_noise_kind: gaussian``: dinopl's ``LogitNoiseWrapper``: targets that ignore the label,
  standard-normal logits of ``n_classes`` dimensions scaled to unit L2 norm (÷√n_classes) and divided
  by the temperature ``logit_noise``;
* ``inputs_as_logits``: the first global crop's (normalised) pixels, flattened (dinopl's
  ``InputsAsTargetsWrapper``, the autoencoder-style target).

``resample_noise: false`` draws the noise once per training image from ``seed`` and keeps it for the
whole run, as dinopl precomputes it (exactly ``round(N · label_noise)`` images relabelled); ``true``
draws it anew every step. Both are tensors on the device, indexed by the batch's image indices: no
host sync in a step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trainables.dino.params import DinoParams


def inputs_target_dim(p: DinoParams, input_shape: tuple[int, ...]) -> int:
    """``inputs_as_logits``: the target's size, the first global crop's values (C × size × size)."""
    size = p.crops.global_size or input_shape[-1]
    return int(math.prod(input_shape[:-2])) * size * size


class SupervisedTargets:
    """Target logits for the images ``idx`` of the training split (absolute indices)."""

    def __init__(self, p: DinoParams, train_y: torch.Tensor, num_classes: int, out_dim: int):
        self.p, self.out_dim, self.num_classes = p, out_dim, num_classes
        self.n_classes = p.n_classes or num_classes
        device = train_y.device
        if p.inputs_as_logits:
            return
        if p.logit_noise_kind == "gaussian" and p.logit_noise > 0 and self.n_classes > out_dim:
            raise ValueError(f"n_classes ({self.n_classes}) exceeds head.out_dim ({out_dim}): the Gaussian "
                             f"target logits must fit the student's outputs")
        if num_classes > out_dim:
            raise ValueError(f"supervised: head.out_dim ({out_dim}) is below the dataset's {num_classes} classes")
        self.labels = train_y
        self.fixed_logits = None
        if p.resample_noise:
            return
        # dinopl precomputes its noisy targets once per image; here they come from the trial's seed
        gen = torch.Generator().manual_seed(p.seed)
        n = len(train_y)
        if p.label_noise > 0:
            labels = train_y.cpu().clone()
            chosen = torch.randperm(n, generator=gen)[:round(n * p.label_noise)]
            labels[chosen] = torch.randint(0, num_classes, (len(chosen),), generator=gen)
            self.labels = labels.to(device)
        if p.logit_noise > 0 and p.logit_noise_kind == "gaussian":
            self.fixed_logits = (torch.randn(n, self.n_classes, generator=gen) / math.sqrt(self.n_classes)).to(device)
        elif p.logit_noise > 0:
            self.fixed_logits = (p.logit_noise * torch.randn(n, out_dim, generator=gen)).to(device)

    def __call__(self, idx: torch.Tensor, first_global: torch.Tensor) -> torch.Tensor:
        p = self.p
        if p.inputs_as_logits:
            return first_global.flatten(1).float()
        if p.logit_noise > 0 and p.logit_noise_kind == "gaussian":
            logits = self.fixed_logits[idx] if self.fixed_logits is not None else \
                torch.randn(len(idx), self.n_classes, device=idx.device) / math.sqrt(self.n_classes)
            # logits for classes beyond n_classes stay 0, as the label targets' do beyond the classes
            return F.pad(logits / p.logit_noise, (0, self.out_dim - self.n_classes))
        y = self.labels[idx]
        if p.label_noise > 0 and p.resample_noise:
            flip = torch.rand(len(y), device=y.device) < p.label_noise
            y = torch.where(flip, torch.randint(0, self.num_classes, y.shape, device=y.device), y)
        logits = F.one_hot(y, self.out_dim).float() * p.label_logit
        if p.logit_noise > 0:  # additive
            noise = self.fixed_logits[idx] if self.fixed_logits is not None else \
                p.logit_noise * torch.randn_like(logits)
            logits = logits + noise
        return logits
