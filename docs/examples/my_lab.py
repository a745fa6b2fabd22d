"""A worked plugin: one small module that adds a loss, a model and a dataset to w2s-sweep, loaded
the way a lab loads its own code, without touching the package:

    PYTHONPATH=docs/examples W2S_PLUGINS=my_lab .venv/bin/python run_sweep.py docs/examples/my_lab.yaml

* loss ``logit_mse``: the student's logits regress the teacher's (Ba & Caruana's "do deep nets
  really need to be deep" distillation), plus a weighted cross-entropy on the labels:
  ``L = label_weight · CE(z_s, y) + mse_weight · mean((z_s − z_t)²)``;
* model ``two_layer``: an MLP with one hidden layer of ``hidden`` units (flattens any image);
* dataset ``iris_images``: scikit-learn's iris, its four measurements as a 1×2×2 "image", split
  with the trial's ``split_seed``.

Each registers with the same decorator the built-ins use; ``tests/test_plugin_example.py`` runs this
file's search space end to end, so the example keeps working.
"""
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from trainables.data import register_dataset
from trainables.data.base import DatasetSplits, split_indices
from trainables.losses import register_loss
from trainables.losses.base import DistillLoss, LossInputs, LossParams, soft_cross_entropy
from trainables.models import register_model
from trainables.models.base import Classifier


class LogitMSEParams(LossParams):  # unknown keys in loss_params are refused at parse time
    label_weight: float = Field(1.0, ge=0.0)
    mse_weight: float = Field(1.0, ge=0.0)


@register_loss("logit_mse", params=LogitMSEParams)
class LogitMSE(DistillLoss):
    def forward(self, inputs: LossInputs):
        p = self.params
        mse = (inputs.student_logits.float() - inputs.teacher_logits.detach().float()).pow(2).mean()
        ce = soft_cross_entropy(inputs.student_logits, inputs.targets, 0.0)
        return {"loss": p.label_weight * ce + p.mse_weight * mse, "ce": ce.detach(), "mse": mse.detach()}


class TwoLayer(Classifier):
    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU())
        self.num_features = hidden
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x):
        return self.body(x)


@register_model("two_layer")
def two_layer(num_classes: int, input_shape: tuple[int, ...], hidden: int = 16) -> TwoLayer:
    return TwoLayer(num_classes, input_shape, hidden)


@register_dataset("iris_images")
def load_iris_images(seed: int = 0, fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)) -> DatasetSplits:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    labels = bunch.target.astype(np.int64)
    train, val, test = split_indices(labels, tuple(fractions), seed)
    # standardised with the training split's statistics only
    mean, std = bunch.data[train].mean(0), bunch.data[train].std(0)
    x = torch.from_numpy(((bunch.data - mean) / std).astype(np.float32)).view(-1, 1, 2, 2)
    y = torch.from_numpy(labels)
    return DatasetSplits("iris_images", x[train], y[train], x[val], y[val], x[test], y[test], num_classes=3,
                         mean=(0.0,), std=(1.0,))
