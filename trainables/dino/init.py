"""The ``dino`` family's student initialisation (dinopl's ``--s_init``): a copy of the teacher, its
own random init, or a mix of the two.

With θ_t the teacher's initial parameters and θ_r a fresh random init (from ``student_init_seed``,
or the draws that follow the teacher's in its stream, as for ``random``), per parameter tensor:

* ``interpolated``: θ_s = (1 − α)·θ_t + α·θ_r, so α = 0 is the teacher and α = 1 the random init
  (dinopl's convention);
* ``neighborhood``: θ_s = θ_t + ε·θ_r, the teacher moved by ε times a random init;
* ``student_init_var_preserving`` divides the result by √((1 − α)² + α²) (``interpolated``) or
  √(1 + ε²) (``neighborhood``): the standard deviation of a sum of two independent zero-mean tensors
  of equal variance, so each weight tensor's variance is again the random init's.

As dinopl, every parameter is mixed, biases and normalisation gains included (a BN gain of 1
becomes 1/√((1 − α)² + α²) under the correction), and buffers (BN statistics) are the random
init's, which at initialisation equal the teacher's.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from trainables.data import DatasetSplits
from trainables.dino import model as dino_model
from trainables.dino.params import DinoParams


def var_preserving_scale(mode: str, alpha: float = 0.0, eps: float = 0.0) -> float:
    """The standard deviation of the mix relative to that of either end (independent, zero mean)."""
    if mode == "interpolated":
        return math.sqrt((1.0 - alpha) ** 2 + alpha ** 2)
    if mode == "neighborhood":
        return math.sqrt(1.0 + eps ** 2)
    raise ValueError(f"student_init: no variance correction for {mode!r}")


@torch.no_grad()
def mix_into(student: nn.Module, teacher: nn.Module, mode: str, alpha: float = 0.0, eps: float = 0.0,
             var_preserving: bool = False) -> None:
    """Overwrite ``student``'s parameters (a fresh random init on entry) with the ``mode`` mix of
    them and ``teacher``'s, in place."""
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("student_init: student and teacher have different parameters")
    scale = var_preserving_scale(mode, alpha, eps) if var_preserving else 1.0
    for name, p_s in s_params.items():
        p_t = t_params[name]
        if mode == "interpolated":
            p_s.mul_(alpha).add_(p_t, alpha=1.0 - alpha)
        elif mode == "neighborhood":
            p_s.mul_(eps).add_(p_t)
        else:
            raise ValueError(f"student_init: {mode!r} is not a mixing mode (interpolated, neighborhood)")
        if scale != 1.0:
            p_s.div_(scale)


def init_student_teacher(p: DinoParams, data: DatasetSplits) -> tuple[nn.Module, nn.Module]:
    """Student and teacher for ``p.student_init``: ``teacher`` and ``random`` as
    :func:`trainables.dino.model.init_student_teacher`; ``interpolated`` and ``neighborhood`` mix
    that function's ``random`` student with the teacher (:func:`mix_into`)."""
    if p.student_init in ("teacher", "random"):
        return dino_model.init_student_teacher(p, data)
    student, teacher = dino_model.init_student_teacher(p.model_copy(update={"student_init": "random"}), data)
    mix_into(student, teacher, p.student_init, alpha=p.student_init_alpha, eps=p.student_init_eps,
             var_preserving=p.student_init_var_preserving)
    return student, teacher
