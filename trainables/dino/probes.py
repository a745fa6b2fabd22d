"""The ``dino`` family's evaluation of encoder features: a kNN classifier and a linear probe."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import DatasetSplits
from trainables.dino.params import DinoParams
from trainables.runtime.engine import predict
from trainables.training.linear_probe import ProbeSpec, train_probes


@torch.no_grad()
def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor, *,
                 k: int, num_classes: int, temperature: float | None = 0.07, block: int = 1024) -> float:
    """kNN classification with cosine similarity: each query votes over its ``k`` most similar
    training points, each vote weighted by exp(similarity / temperature) (DINO's weighted kNN),
    or 1 when ``temperature`` is None (majority vote; ties go to the lower class)."""
    train = F.normalize(train_x.float(), dim=1)
    query = F.normalize(query_x.float(), dim=1)
    k = min(k, len(train))
    correct = torch.zeros((), device=query.device)
    for start in range(0, len(query), block):
        sims, idx = (query[start:start + block] @ train.T).topk(k, dim=1)
        weights = torch.ones_like(sims) if temperature is None else (sims / temperature).exp()
        votes = torch.zeros(len(sims), num_classes, device=query.device)
        votes.scatter_add_(1, train_y[idx].to(query.device), weights)
        correct += (votes.argmax(1) == query_y[start:start + block].to(query.device)).sum()
    return float(correct) / max(len(query), 1)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor,
                          evals: dict[str, tuple[torch.Tensor, torch.Tensor]], *, num_classes: int,
                          p: DinoParams) -> dict[str, float]:
    """A softmax-regression probe on standardised features (the vectorised probe code, one probe)."""
    mean, std = train_x.mean(0, keepdim=True), train_x.std(0, keepdim=True).clamp_min(1e-6)
    views = []
    train_probes((train_x - mean) / std, {"labels": train_y},
                 [ProbeSpec("labels", lr=p.probe_lr, weight_decay=p.probe_weight_decay, epochs=p.probe_epochs)],
                 num_classes=num_classes, batch_size=p.probe_batch_size, seed=p.seed, on_epoch=views.append)
    last = views[-1]
    return {name: float((last.predict((x - mean) / std)[0] == y.to(x.device)).float().mean())
            for name, (x, y) in evals.items()}


def probe_encoder(encoder: nn.Module, data: DatasetSplits, p: DinoParams) -> dict[str, float]:
    """kNN and linear-probe accuracy of ``encoder``'s features: fit on train, scored on val and test."""
    feats = {split: predict(encoder, getattr(data, f"{split}_x"), features=True) for split in ("train", "val", "test")}
    ys = {split: getattr(data, f"{split}_y") for split in ("train", "val", "test")}
    out = {}
    for split, prefix in (("val", ""), ("test", "test_")):
        out[f"{prefix}knn_acc"] = knn_accuracy(feats["train"], ys["train"], feats[split], ys[split], k=p.knn_k,
                                               num_classes=data.num_classes, temperature=p.knn_temperature)
    lin = linear_probe_accuracy(feats["train"], ys["train"], {s: (feats[s], ys[s]) for s in ("val", "test")},
                                num_classes=data.num_classes, p=p)
    out["linear_acc"], out["test_linear_acc"] = lin["val"], lin["test"]
    return out
