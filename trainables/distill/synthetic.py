"""The ``distill`` family's generated training images (DAPT's synthetic-data distillation): the
generated set as an artifact-cache entry, shared like a teacher by every trial and later sweep,
and the training sets of the student and the teacher built from it (``synthetic.*``)."""
from __future__ import annotations

import os
from typing import Any

import torch

from trainables.data import DatasetSplits
from trainables.data.generated import MANIFEST, GenerationRecipe, generate_images, generation_recipe, with_generated
from trainables.runtime.engine import predict
from trainables.runtime.trainable import TrialContext

KIND = "generated_images"


def generated_set(g: GenerationRecipe, ctx: TrialContext):
    """The generated set's cache entry: generated once (in the driver's preparation when it is
    not searched), then read by every trial."""
    if ctx.artifacts is None:
        raise RuntimeError("generated images need an artifact store (TrialContext.artifacts)")
    return ctx.artifacts.get_or_create(KIND, generation_recipe(g), lambda d: generate_images(g, d))


def training_set(p, data: DatasetSplits, ctx: TrialContext, teacher: bool) -> DatasetSplits:
    """``data`` with the training split the student (or the teacher) trains on."""
    s = p.synthetic
    if not s.uses(teacher):
        return data
    folder = os.path.dirname(generated_set(s.generation, ctx).file(MANIFEST))
    size, real = (s.teacher_synset_size, s.teacher_real) if teacher else (s.synset_size, s.real)
    return with_generated(data, folder, size, real)


def student_set_differs(p) -> bool:
    """The student trains on another set than the teacher did: the teacher's cached training
    logits do not cover it."""
    return p.synthetic.train_set(teacher=False) != p.synthetic.train_set(teacher=True)


def cached_student_set_logits(p, ctx: TrialContext, teacher_key: dict[str, Any], load_model, data: DatasetSplits,
                              device: torch.device) -> torch.Tensor:
    """The teacher's logits on the student's training set (real and / or generated), computed
    once per (teacher, student set) and shared by every trial."""
    recipe = {"teacher": teacher_key, "outputs": "train_logits", "train_set": p.synthetic.train_set(teacher=False)}

    def build(out_dir: str) -> dict[str, Any]:
        logits = predict(load_model(), data.train_x)
        torch.save(logits.cpu(), os.path.join(out_dir, "train_logits.pt"))
        return {"num_samples": logits.shape[0]}

    entry = ctx.artifacts.get_or_create("teacher_set_logits", recipe, build)
    return torch.load(entry.file("train_logits.pt"), map_location=device)
