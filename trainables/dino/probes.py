"""The ``dino`` family's evaluation of encoder features: a kNN classifier and a linear probe, each
on the raw features and (``probe_normalized``) on train-standardised features, as dinopl's prober
(``probe/…`` and ``probe/norm/…``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import DatasetSplits
from trainables.dino.params import DinoParams
from trainables.runtime.engine import predict
from trainables.training.linear_probe import ProbeSpec, train_probes


def standardize(train_x: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Subtract the training features' per-feature mean and divide by their (unbiased) std; a
    feature whose std is below 10 float eps is divided by 1 (sklearn's StandardScaler rule, as
    dinopl's ``normalize_data``). Returns the standardised ``train_x`` then ``others``."""
    train_x = train_x.float()
    mean = train_x.mean(0, keepdim=True)
    std = train_x.std(0, keepdim=True) if len(train_x) > 1 else torch.ones_like(mean)
    std = torch.where(std < 10 * torch.finfo(std.dtype).eps, torch.ones_like(std), std)
    return [(x.float() - mean) / std for x in (train_x, *others)]


@torch.no_grad()
def knn_predict(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, *, k: int, num_classes: int,
                metric: str = "cosine", temperature: float | None = 0.07, block: int = 1024) -> torch.Tensor:
    """kNN class predictions for ``query_x``: each query votes over its ``k`` nearest training points.

    ``cosine``: nearest by cosine similarity; each vote weighted by exp(similarity / temperature)
    (DINO's weighted kNN), or 1 when ``temperature`` is None. ``l2``: nearest by Euclidean distance,
    one vote each (dinopl's faiss ``IndexFlat`` + mode; ``temperature`` must be None). The class
    with most votes wins; ties go to the lower class, as scikit-learn's ``KNeighborsClassifier``.
    Float64 features are compared in float64, others in float32."""
    if metric not in ("cosine", "l2"):
        raise ValueError(f"knn metric must be 'cosine' or 'l2', not {metric!r}")
    if metric == "l2" and temperature is not None:
        raise ValueError("the l2 kNN is a majority vote: temperature must be None")
    dtype = torch.float64 if train_x.dtype == torch.float64 else torch.float32
    train, query = train_x.to(dtype), query_x.to(query_x.device, dtype)
    if metric == "cosine":
        train, query = F.normalize(train, dim=1), F.normalize(query, dim=1)
    train = train.to(query.device)
    labels = train_y.to(query.device)
    k = min(k, len(train))
    preds = []
    for start in range(0, len(query), block):
        q = query[start:start + block]
        if metric == "cosine":
            sims, idx = (q @ train.T).topk(k, dim=1)
            weights = torch.ones_like(sims) if temperature is None else (sims / temperature).exp()
        else:
            # squared distances ||q||^2 - 2 q.t + ||t||^2: the same order as the distances
            d2 = (q * q).sum(1, keepdim=True) - 2 * q @ train.T + (train * train).sum(1)[None]
            _, idx = d2.topk(k, dim=1, largest=False)
            weights = torch.ones(idx.shape, dtype=dtype, device=q.device)
        votes = torch.zeros(len(q), num_classes, dtype=dtype, device=q.device)
        votes.scatter_add_(1, labels[idx], weights)
        preds.append(votes.argmax(1))  # the first maximum: ties to the lower class
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=query.device)


@torch.no_grad()
def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor, *,
                 k: int, num_classes: int, temperature: float | None = 0.07, metric: str = "cosine",
                 block: int = 1024) -> float:
    """Accuracy of :func:`knn_predict` on ``query_y``."""
    pred = knn_predict(train_x, train_y, query_x, k=k, num_classes=num_classes, metric=metric,
                       temperature=temperature, block=block)
    return float((pred == query_y.to(pred.device)).sum()) / max(len(query_y), 1)


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor,
                          evals: dict[str, tuple[torch.Tensor, torch.Tensor]], *, num_classes: int,
                          p: DinoParams) -> dict[str, float]:
    """A softmax-regression probe on the features as given (the vectorised probe code, one probe):
    standardise them first (:func:`standardize`) for the normalised probe."""
    views = []
    train_probes(train_x, {"labels": train_y},
                 [ProbeSpec("labels", lr=p.probe_lr, weight_decay=p.probe_weight_decay, epochs=p.probe_epochs)],
                 num_classes=num_classes, batch_size=p.probe_batch_size, seed=p.seed, on_epoch=views.append)
    last = views[-1]
    return {name: float((last.predict(x.float())[0] == y.to(x.device)).float().mean())
            for name, (x, y) in evals.items()}


def probe_features(feats: dict[str, torch.Tensor], ys: dict[str, torch.Tensor], num_classes: int, p: DinoParams,
                   suffix: str = "") -> dict[str, float]:
    """kNN and linear-probe accuracy of features ``feats`` (train / val / test): fit on train,
    scored on val (``knn_acc``, ``linear_acc``) and test (``test_…``); ``suffix`` ends each name."""
    out = {}
    for split, prefix in (("val", ""), ("test", "test_")):
        out[f"{prefix}knn_acc{suffix}"] = knn_accuracy(
            feats["train"], ys["train"], feats[split], ys[split], k=p.knn_k, num_classes=num_classes,
            temperature=p.knn_temperature, metric=p.knn_metric)
    lin = linear_probe_accuracy(feats["train"], ys["train"], {s: (feats[s], ys[s]) for s in ("val", "test")},
                                num_classes=num_classes, p=p)
    out[f"linear_acc{suffix}"], out[f"test_linear_acc{suffix}"] = lin["val"], lin["test"]
    return out


def probe_encoder(encoder: nn.Module, data: DatasetSplits, p: DinoParams) -> dict[str, float]:
    """Probes of ``encoder``'s features on the raw features (``knn_acc``, ``linear_acc``, ``test_…``)
    and, with ``probe_normalized``, on train-standardised ones (the same names + ``_normalized``)."""
    splits = ("train", "val", "test")
    feats = {split: predict(encoder, getattr(data, f"{split}_x"), features=True) for split in splits}
    ys = {split: getattr(data, f"{split}_y") for split in splits}
    labelled = ys["train"] >= 0  # unlabelled training images (STL-10's, label -1) train DINO, not the probes
    if not bool(labelled.all()):
        if not bool(labelled.any()):
            raise ValueError("the probes need labelled training images; this training split has none (STL-10's "
                             "split: unlabeled): use split train+unlabeled")
        feats["train"], ys["train"] = feats["train"][labelled.to(feats["train"].device)], ys["train"][labelled]
    out = probe_features(feats, ys, data.num_classes, p)
    if p.probe_normalized:
        normed = dict(zip(splits, standardize(*(feats[s] for s in splits))))
        out.update(probe_features(normed, ys, data.num_classes, p, suffix="_normalized"))
    return out
