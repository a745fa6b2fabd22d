"""The cached inputs of a weak-to-strong probe: weak-teacher logits and strong-model embeddings
of every image of a dataset, plus the splits the probes use.

Both are tables in the sweep's feature store (``TrialContext.artifacts``), keyed by a content hash of
(dataset, transform, model, weights). "Weights" is the model name and kwargs (``pretrained``), the
SHA-256 of a ``checkpoint`` file, and, for a model trained here, its full training recipe
including the slice of the dataset it trained on. A model trained here is itself a cache entry.
So a pass runs once per recipe across trials, nodes and sweeps, and a second sweep over the same
data runs none: :data:`COUNTS` counts the passes and trainings this process ran.

The dataset is split by role, stratified with ``split_seed``: a ``weak`` slice and a ``strong``
slice (``pretrain_split``) on which the weak teacher and the strong backbone may be trained here,
and the rest, the *probe pool*, which neither saw. The pool is permuted with ``split_seed`` (as
the seed script permutes ImageNet val) and cut into train (the first ``n_train``, of which the
last ``n_val`` are held out for validation) and test (the rest).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Protocol

import numpy as np
import torch
from pydantic import Field, model_validator

from trainables.core.config import StrictModel
from trainables.core.digest import file_digest
from trainables.core.registry import kwargs_validator
from trainables.core.stage_work import stage_dir
from trainables.data import DatasetSplits, load_dataset, split_indices
from trainables.data.streamed import folder_dataset, is_folder_dataset, open_folder_dataset
from trainables.losses import create_loss
from trainables.models import ModelName, check_model_kwargs, create_model
from trainables.runtime.engine import autocast, seed_everything
from trainables.runtime.stages import StageSession
from trainables.training.classifier_loop import OptimConfig, train_classifier

COUNTS = {"feature_passes": 0, "model_trainings": 0}


class ModelTraining(StrictModel):
    """Train the model here with cross-entropy on its own slice of the dataset."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    seed: int = Field(0, ge=0)


class ModelSource(StrictModel):
    """Where a weak teacher or a strong backbone comes from: a registered model, optionally with
    weights from ``model_kwargs`` (e.g. ``pretrained: true``) or a ``checkpoint`` state dict, and
    optionally trained here (``train``) on its slice of the dataset."""

    model: ModelName
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="a state-dict file (or a trial checkpoint with a 'model' entry)")
    train: ModelTraining | None = None

    _model_kwargs_fit = kwargs_validator("model", "model_kwargs", check_model_kwargs)


class PretrainSplit(StrictModel):
    weak: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of the dataset the weak teacher trains on")
    strong: float = Field(0.0, ge=0.0, lt=1.0, description="fraction the strong backbone trains on")

    @model_validator(mode="after")
    def _leaves_a_pool(self):
        if self.weak + self.strong >= 0.95:
            raise ValueError(f"weak + strong ({self.weak + self.strong:g}) must leave at least 5% as the probe pool")
        return self


class FeatureParams(Protocol):
    dataset: str
    dataset_kwargs: dict[str, Any]
    split_seed: int
    pretrain_split: PretrainSplit
    weak: ModelSource
    strong: ModelSource
    n_train: float
    n_val: float
    feature_batch_size: int
    feature_workers: int


class TableCache(Protocol):
    """What a trial needs of ``TrialContext.artifacts`` (``orchestrator.store.feature_store.FeatureStore``)."""

    def get_or_create(self, kind: str, recipe: dict, build) -> Any: ...

    def get_or_create_table(self, kind: str, recipe: dict, build) -> Any: ...

    def get_or_create_sharded_table(self, kind: str, recipe: dict, shards: int, run) -> Any: ...


# ---------------------------------------------------------------------------------------------
# The dataset, in one fixed order, loaded only when a pass or a training needs images
# ---------------------------------------------------------------------------------------------


class ImageData:
    def __init__(self, name: str, kwargs: dict[str, Any], batch_size: int = 256, workers: int = 0):
        self.name, self.kwargs = name, dict(kwargs)
        self.batch_size, self.workers = batch_size, workers
        self._memory: tuple[torch.Tensor, torch.Tensor] | None = None
        self._folder = None
        spec = folder_dataset(name)
        if spec is not None:
            self.num_classes, self.input_shape, self.transform = spec.num_classes, spec.input_shape, spec.transform
        else:
            x, y = self._tensors()
            self.num_classes = int(self._splits.num_classes)
            self.input_shape, self.transform = tuple(x.shape[1:]), "as-loaded"

    @property
    def identity(self) -> dict[str, Any]:
        kwargs = dict(self.kwargs)
        if "data_root" in kwargs:
            kwargs["data_root"] = os.path.abspath(os.path.expanduser(kwargs["data_root"]))
        return {"dataset": self.name, "kwargs": kwargs, "transform": self.transform}

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._memory is None:
            splits: DatasetSplits = load_dataset(self.name, **{"seed": 0, **self.kwargs})
            self._splits = splits
            self._memory = (torch.cat([splits.train_x, splits.val_x, splits.test_x]),
                            torch.cat([splits.train_y, splits.val_y, splits.test_y]))
        return self._memory

    def _folder_data(self):
        if self._folder is None:
            kwargs = {k: v for k, v in self.kwargs.items() if k in ("data_root", "split")}
            self._folder = open_folder_dataset(self.name, **kwargs)
        return self._folder

    def labels(self) -> np.ndarray:
        if is_folder_dataset(self.name):
            return np.asarray(self._folder_data().targets, dtype=np.int64)
        return self._tensors()[1].numpy()

    def __len__(self) -> int:
        if is_folder_dataset(self.name):
            return len(self._folder_data())
        return len(self._tensors()[1])

    def num_batches(self) -> int:
        return -(-len(self) // self.batch_size)

    def batches(self, first: int = 0, stop: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) batches ``first`` to ``stop`` (default: all) of the dataset, in order.
        A shard of a sharded pass gets the very batches a whole pass has there, so its outputs are
        the same numbers (a batch of another size may round differently)."""
        lo = first * self.batch_size
        hi = len(self) if stop is None else min(len(self), stop * self.batch_size)
        if is_folder_dataset(self.name):
            rows = self._folder_data()
            if (lo, hi) != (0, len(rows)):
                rows = torch.utils.data.Subset(rows, range(lo, hi))
            loader = torch.utils.data.DataLoader(rows, batch_size=self.batch_size, shuffle=False,
                                                 num_workers=self.workers, pin_memory=torch.cuda.is_available())
            yield from loader
            return
        x, y = self._tensors()
        for start in range(lo, hi, self.batch_size):
            yield x[start:start + self.batch_size], y[start:start + self.batch_size]

    def subset(self, indices: np.ndarray) -> DatasetSplits:
        """The given samples as a DatasetSplits (train = val = test) for training a model here."""
        if is_folder_dataset(self.name):
            raise ValueError(f"training a model here needs an in-memory dataset; {self.name} is read from disk. "
                             "Use a pretrained model or a checkpoint instead")
        x, y = self._tensors()
        idx = torch.as_tensor(indices)
        xs, ys = x[idx], y[idx]
        return DatasetSplits(self.name, xs, ys, xs, ys, xs, ys, num_classes=self.num_classes,
                             mean=self._splits.mean, std=self._splits.std)


# ---------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------


@dataclass
class Splits:
    weak: np.ndarray
    strong: np.ndarray
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def resolve_count(value: float, total: int) -> int:
    """A fraction (< 1) of ``total`` or an absolute count."""
    return int(round(value * total)) if value < 1 else int(value)


def make_splits(labels: np.ndarray, p: FeatureParams) -> Splits:
    fractions = (p.pretrain_split.weak, p.pretrain_split.strong, 1.0 - p.pretrain_split.weak - p.pretrain_split.strong)
    if fractions[0] == fractions[1] == 0:
        weak = strong = np.empty(0, dtype=np.int64)
        pool = np.arange(len(labels))
    else:
        weak, strong, pool = split_indices(labels, fractions, p.split_seed)
    order = pool[np.random.default_rng(p.split_seed).permutation(len(pool))]
    n_train, n_val = resolve_count(p.n_train, len(pool)), resolve_count(p.n_val, len(pool))
    if not 0 < n_train < len(pool):
        raise ValueError(f"n_train {p.n_train} gives {n_train} of the {len(pool)} probe-pool samples; "
                         "it must leave some for the test split")
    if n_val >= n_train:
        raise ValueError(f"n_val ({n_val}) must be smaller than n_train ({n_train})")
    train_all = order[:n_train]
    return Splits(weak, strong, train_all[:n_train - n_val], train_all[n_train - n_val:], order[n_train:])


# ---------------------------------------------------------------------------------------------
# Models and cached passes
# ---------------------------------------------------------------------------------------------

def model_recipe(source: ModelSource, role: str, p: FeatureParams, data_identity: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines the model's weights."""
    recipe = {"model": source.model, "model_kwargs": source.model_kwargs,
              "checkpoint_sha256": file_digest(source.checkpoint) if source.checkpoint else None}
    kwarg_checkpoint = source.model_kwargs.get("checkpoint")
    if isinstance(kwarg_checkpoint, str):  # a wrapper's own checkpoint kwarg: key on its content too
        recipe["model_kwargs_checkpoint_sha256"] = file_digest(kwarg_checkpoint)
    if source.train is not None:
        recipe["trained_on"] = {"data": data_identity, "role": role, "split_seed": p.split_seed,
                                "pretrain_split": p.pretrain_split.model_dump(), **source.train.model_dump(),
                                # OptimConfig's default since issue 14 (no decay on biases / norms):
                                # models trained before it, with decay on every parameter, are not reused.
                                "wd_exclude_1d": True}
    return recipe


def load_checkpoint(model: torch.nn.Module, path: str) -> None:
    state = torch.load(os.path.expanduser(path), map_location="cpu", weights_only=False)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # a trial checkpoint (state.pt) rather than a bare state dict
    model.load_state_dict(state)


def _new_model(source: ModelSource, data: ImageData) -> torch.nn.Module:
    model = create_model(source.model, num_classes=data.num_classes, input_shape=data.input_shape,
                         **source.model_kwargs)
    if source.checkpoint:
        load_checkpoint(model, source.checkpoint)
    return model


def train_here(source: ModelSource, indices: np.ndarray, data: ImageData, out_dir: str,
               device: torch.device, role: str = "weak") -> dict[str, Any]:
    t = source.train
    seed_everything(t.seed)
    model = _new_model(source, data)
    subset = data.subset(indices).to(device)
    # progress lines, and a checkpoint in the cache entry's work folder that an interrupted build resumes
    stage = StageSession(f"{role} model {source.model} ({len(indices)} images)", t.epochs, device,
                         stage_dir(f"{role}_model"))
    final = train_classifier(model=model, data=subset, loss_fn=create_loss("ce"), session=stage, checkpoint_every=1,
                             seed=t.seed, optim=OptimConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                                                            optimizer=t.optimizer, weight_decay=t.weight_decay))
    final = final or stage.last  # resumed after its last epoch
    torch.save(model.cpu().state_dict(), os.path.join(out_dir, "model.pt"))
    COUNTS["model_trainings"] += 1
    return {"train_acc": final["test_acc"], "train_samples": len(indices)}


def build_model(source: ModelSource, role: str, p: FeatureParams, data: ImageData, cache: TableCache,
                device: torch.device) -> torch.nn.Module:
    """The model with its weights: pretrained / from a checkpoint, or trained here (cached)."""
    if source.train is None:
        return _new_model(source, data)
    labels = data.labels()
    splits = make_splits(labels, p)
    indices = splits.weak if role == "weak" else splits.strong
    if len(indices) == 0:
        raise ValueError(f"{role}.train is set but pretrain_split.{role} is 0: there is no slice to train on")
    recipe = model_recipe(source, role, p, data.identity)
    entry = cache.get_or_create("w2s_model", recipe, lambda d: train_here(source, indices, data, d, device, role))
    model = _new_model(source, data)
    model.load_state_dict(torch.load(entry.file("model.pt"), map_location="cpu"))
    return model


@torch.no_grad()
def run_pass(model: torch.nn.Module, data: ImageData, output: str, writer, device: torch.device,
             first: int = 0, stop: int | None = None) -> dict[str, Any]:
    """One pass over the dataset, or over its batches ``first`` to ``stop`` (a shard): logits
    (``output='logits'``) or pooled features."""
    model = model.to(device).eval()
    if device.type == "cuda" and len(data.input_shape) == 3:
        model = model.to(memory_format=torch.channels_last)
    correct = seen = 0
    start = first * data.batch_size
    out = torch.empty(0, 0)
    for x, y in data.batches(first, stop):
        x = x.to(device, non_blocking=True)
        if device.type == "cuda" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            out = model(x) if output == "logits" else model.forward_features(x)
        out = out.float().flatten(1)
        if output == "logits":
            correct += int((out.argmax(-1).cpu() == y).sum())
        seen += len(y)
        writer.write(index=np.arange(start, start + len(y), dtype=np.int64), label=y.numpy().astype(np.int64),
                     values=out.cpu().numpy().astype(np.float32))
        start += len(y)
    COUNTS["feature_passes"] += 1
    meta: dict[str, Any] = {"samples": seen, "dim": int(out.shape[1])}
    if output == "logits":
        meta["acc_all"] = correct / max(seen, 1)
        meta["correct"] = correct  # a sharded pass sums it over shards for acc_all
    return meta


def cached_outputs(source: ModelSource, role: str, output: str, p: FeatureParams, data: ImageData,
                   cache: TableCache, device: torch.device, sharding: Sharding | None = None):
    # The recipe leaves out ``workers``: a sharded pass makes the same table as one process, so
    # either reuses the other's entry.
    recipe = {"data": data.identity, "output": output, "model": model_recipe(source, role, p, data.identity)}
    if sharding is not None and sharding.workers > 1:
        job = ShardJob(source, role, output, p, cache)
        return cache.get_or_create_sharded_table(f"w2s_{output}", recipe, sharding.workers,
                                                 lambda staging: run_sharded_pass(job, staging, sharding))

    def build(writer):
        meta = run_pass(build_model(source, role, p, data, cache, device), data, output, writer, device)
        meta.pop("correct", None)  # kept only by shards: the one-process entry's meta is as before
        return meta

    return cache.get_or_create_table(f"w2s_{output}", recipe, build)


# ---------------------------------------------------------------------------------------------
# The sharded pass: ``workers: N`` computes the table N ways, a device each
# ---------------------------------------------------------------------------------------------
#
# Why Ray Train (TorchTrainer) rather than Ray Data ``map_batches``: the pass is N long-lived
# workers, each holding one device and one copy of the model, over a contiguous run of the batches
# a whole pass makes, which is what a Train worker group is: it reserves N x (cpus_per_worker,
# gpus_per_worker) as one placement group exactly as a DDP trial does, gives each worker its rank
# and its device, and fails the whole run when one worker fails. Ray Data would re-batch the rows
# (its blocks, not ours: other batch sizes can round differently), move every image through its
# object store, and decide itself how many actors run; its outputs would come back through the
# driver, where here each shard writes its own rows straight to the store's staging area.


@dataclass(frozen=True)
class Sharding:
    """How a pass is sharded: ``workers`` Train workers, each holding ``resources`` (what one
    worker of the sweep holds: ``{"CPU": c, "GPU": g}``); Train runs leave their state under
    ``storage`` (the sweep's storage path, so a cluster's workers reach it)."""

    workers: int
    resources: dict[str, float]
    storage: str = ""

    def worker_resources(self) -> dict[str, float]:
        held = {k: float(v) for k, v in self.resources.items() if float(v) > 0}
        return held or {"CPU": 1.0}


@dataclass
class ShardJob:
    """What every shard worker needs to compute its part of one table (picklable)."""

    source: ModelSource
    role: str
    output: str
    params: Any  # FeatureParams
    cache: Any  # TableCache: the store, re-opened by URI in each worker


def shard_batches(num_batches: int, shards: int, shard: int) -> tuple[int, int]:
    """Shard ``shard``'s contiguous run of batches: the batches split as evenly as they go, the
    first shards one longer. Contiguous runs assembled in shard order are the whole pass's order."""
    size, extra = divmod(num_batches, shards)
    first = shard * size + min(shard, extra)
    return first, first + size + (1 if shard < extra else 0)


def compute_shard(job: ShardJob, staging, shard: int, shards: int, device: torch.device) -> dict[str, Any]:
    """One shard of a pass, written to the staging area and marked done (in a Train worker)."""
    import socket
    import time

    p = job.params
    t0 = time.perf_counter()
    data = ImageData(p.dataset, p.dataset_kwargs, p.feature_batch_size, p.feature_workers)
    before = dict(COUNTS)
    # A model trained here is a cache entry: the first worker to take its lock trains it, the
    # others wait on the lock and load it, so it is trained once, on a worker's device.
    model = build_model(job.source, job.role, p, data, job.cache, device)
    first, stop = shard_batches(data.num_batches(), shards, shard)
    writer = staging.writer(shard)
    meta = run_pass(model, data, job.output, writer, device, first, stop)
    lo = first * data.batch_size
    meta.update(shard=shard, batches=[first, stop], span=[lo, lo + meta["samples"]], pid=os.getpid(),
                node=socket.gethostname(), device=str(device), seconds=round(time.perf_counter() - t0, 3),
                model_trainings=COUNTS["model_trainings"] - before["model_trainings"])
    staging.finish(shard, writer, meta)
    return meta


def _shard_worker(config: dict[str, Any]) -> None:
    """The Train worker loop: this rank's shard on this rank's device."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    torch.set_num_threads(max(1, int(config["threads"])))
    compute_shard(config["job"], config["staging"], ctx.get_world_rank(), ctx.get_world_size(),
                  ray.train.torch.get_device())


def run_sharded_pass(job: ShardJob, staging, sharding: Sharding) -> dict[str, Any]:
    """Run the N shards of a pass as a TorchTrainer worker group, each worker with the resources
    one worker of this sweep holds (a GPU each when the sweep's workers have one), and merge their
    metadata in shard order. The first failure ends the run, and raising here leaves the table
    unpublished (:meth:`FeatureStore.get_or_create_sharded_table`)."""
    import uuid

    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    shards, per_worker = sharding.workers, sharding.worker_resources()
    use_gpu = per_worker.get("GPU", 0) > 0
    trainer = TorchTrainer(
        _shard_worker,
        train_loop_config={"job": job, "staging": staging, "threads": per_worker.get("CPU", 1)},
        scaling_config=ray.train.ScalingConfig(num_workers=shards, use_gpu=use_gpu, resources_per_worker=per_worker),
        # gloo even on GPUs: the shards never communicate, and NCCL would refuse two shards on a shared GPU
        torch_config=TorchConfig(backend="gloo"),
        run_config=ray.train.RunConfig(
            name=f"w2s-{job.output}-shards-{uuid.uuid4().hex[:8]}",
            storage_path=sharding.storage or _train_storage(),
            failure_config=ray.train.FailureConfig(max_failures=0),  # a failed shard fails the pass, now
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    trainer.fit()
    metas = [staging.meta(i) for i in range(shards)]
    COUNTS["feature_passes"] += 1  # one pass, however many shards computed it
    COUNTS["model_trainings"] += sum(int(m.get("model_trainings", 0)) for m in metas)
    samples = sum(int(m["samples"]) for m in metas)
    meta: dict[str, Any] = {"samples": samples, "dim": int(max(m["dim"] for m in metas)), "sharded": shards,
                            "shards": [{k: m[k] for k in ("shard", "span", "pid", "node", "device", "seconds")}
                                       for m in metas]}
    if job.output == "logits":
        meta["acc_all"] = sum(int(m["correct"]) for m in metas) / max(samples, 1)
    return meta


def _train_storage() -> str:
    import tempfile

    return os.path.join(tempfile.gettempdir(), "w2s-shard-runs")  # outside a sweep (tests, benches)


@dataclass
class W2SInputs:
    """Everything the probes train and are scored on, on one device."""

    features: torch.Tensor  # (N, D) strong embeddings of every sample
    weak_logits: torch.Tensor  # (N, C)
    labels: torch.Tensor  # (N,)
    splits: Splits
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)

    def rows(self, split: str) -> torch.Tensor:
        return torch.as_tensor(getattr(self.splits, split), device=self.labels.device)


def _cached_entries(p: FeatureParams, cache: TableCache | None, device: torch.device, roles: tuple[str, ...],
                    sharding: Sharding | None = None):
    if cache is None or not hasattr(cache, "get_or_create_table"):
        raise RuntimeError("w2s_probe needs the sweep's feature store as TrialContext.artifacts "
                           "(orchestrator.store.feature_store.FeatureStore)")
    data = ImageData(p.dataset, p.dataset_kwargs, p.feature_batch_size, p.feature_workers)
    before = dict(COUNTS)
    entries = {role: cached_outputs(p.weak if role == "weak" else p.strong, role,
                                    "logits" if role == "weak" else "features", p, data, cache, device, sharding)
               for role in roles}
    info: dict[str, Any] = {k: COUNTS[k] - before[k] for k in COUNTS}
    for role, entry in entries.items():
        info[f"{role}_key"] = entry.key
        info[f"{role}_cache_hit"] = entry.hit
    return data, entries, info


def prepare_inputs(p: FeatureParams, cache: TableCache | None, device: torch.device,
                   roles: tuple[str, ...] = ("weak", "strong"), sharding: Sharding | None = None) -> dict[str, Any]:
    """Make the cached entries of ``roles`` (computing what is missing, sharded when ``sharding``
    has several workers); their keys, hits and counts."""
    return _cached_entries(p, cache, device, roles, sharding)[2]


def load_inputs(p: FeatureParams, cache: TableCache | None, device: torch.device) -> W2SInputs:
    """The weak logits and strong features from the cache (computing what is missing), on ``device``."""
    data, entries, info = _cached_entries(p, cache, device, ("weak", "strong"))
    weak, strong = entries["weak"].columns(), entries["strong"].columns()
    labels = weak["label"]
    if not (np.array_equal(weak["index"], np.arange(len(labels))) and np.array_equal(strong["label"], labels)):
        raise RuntimeError("the cached weak logits and strong features disagree on the samples or their labels; "
                           "the dataset changed under the same name and kwargs")
    if weak["values"].shape[1] != data.num_classes:
        raise ValueError(f"the weak model {p.weak.model} gives {weak['values'].shape[1]} logits, but "
                         f"{p.dataset} has {data.num_classes} classes")
    info["weak_acc_all"] = entries["weak"].meta.get("acc_all")
    return W2SInputs(features=torch.from_numpy(strong["values"]).to(device),
                     weak_logits=torch.from_numpy(weak["values"]).to(device),
                     labels=torch.from_numpy(labels).to(device), splits=make_splits(labels, p),
                     num_classes=data.num_classes, info=info)
