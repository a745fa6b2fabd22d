from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """A backbone producing a pooled feature vector, followed by a linear head.

    Subclasses implement :meth:`forward_features` and set ``self.head`` and ``num_features``.
    """

    num_features: int
    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.forward_features(x)
        logits = self.forward_head(features)
        return (logits, features) if return_features else logits
