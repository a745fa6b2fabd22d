"""Trainable registry: each experiment family (``distill``, ``w2s_probe``, ...) registers its
training loop with its parameter model and an optional preparation step, the way every registry
registers (:mod:`trainables.core.registry`)::

    register_trainable("distill", params=DistillParams, metric="val_acc", mode="max", ...)(run_distill)

The options are :class:`TrainableDef`'s fields; ``params`` is its ``params_model``, which must
forbid unknown keys (every :class:`TrialParams` does)."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Protocol

from pydantic import Field

from trainables.core.config import StrictModel
from trainables.core.registry import Registry, check_keywords, scan
from trainables.runtime.session import Session
from trainables.runtime.vocabulary import Vocabulary


class TrialParams(StrictModel):
    """Parameters every trainable accepts. Unknown keys are an error."""

    seed: int = Field(0, ge=0, description="seed for initialisation and batch order")
    workers: int = Field(1, ge=1, description="DDP workers for this trial (set from resources.workers)")


class ArtifactStore(Protocol):
    """The sweep's content-addressed store of built artifacts (teachers, cached outputs, feature
    tables): ``orchestrator.store.feature_store.FeatureStore``, an ``ArtifactCache`` in tests."""

    def get_or_create(self, kind: str, recipe: dict[str, Any], build: Callable[[str], dict | None]) -> Any: ...


@dataclass
class TrialContext:
    """Sweep-level facts a trial needs besides its parameters. Picklable; shipped to every trial."""

    artifacts: ArtifactStore | None = None
    checkpoint_every: int = 5
    sweep_name: str = ""
    storage_path: str = ""
    # What one worker of the sweep holds ({"CPU": 1, "GPU": 1}): a prepare step that shards its
    # work over resources.workers (TrainableDef.sharded_prepare) gives each of its workers this much.
    worker_resources: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainableDef:
    name: str
    params_model: type[TrialParams]
    train_loop: Callable[[TrialParams, Session, TrialContext], dict[str, Any] | None]
    metric: str
    mode: str
    description: str
    # Runs once in the sweep driver before any trial, with the fixed (unsearched) parameters and
    # the names of searched ones: the place to build shared teachers and caches.
    prepare: Callable[[dict[str, Any], set[str], TrialContext], dict[str, Any] | None] | None = None
    # Non-empty: resources.workers shards this trainable's prepare step (the words say what it
    # shards, for the plan), which gets ``workers`` = resources.workers, while every trial trains
    # on one worker (its config's ``workers`` is 1, and workers cannot be searched).
    sharded_prepare: str = ""
    # Parameter overrides that turn a trial into its no-teacher control (for example KD weight 0).
    control_overrides: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    metrics_doc: dict[str, str] = field(default_factory=dict)
    # Parameters one trial can train several values of at once as one batched computation
    # (``params.vectorize``; see trainables/runtime/vectorize.py). Empty: one configuration per trial.
    vectorized_keys: tuple[str, ...] = ()
    # A vectorised trial can drop single configurations while the rest train on (fused distill
    # members): ASHA then judges each configuration at its rungs (orchestrator/run/member_scheduler.py)
    # and the trial reads the stops from trainables/runtime/member_stops.py. False: ASHA judges the
    # trial by the best of its configurations.
    stops_members: bool = False
    # Per-configuration keys the configurations of one vectorised trial must share after all
    # (what sets the shape of what the trial stacks, say a loss's projector width), each with the
    # reason, given the fixed parameters and each searched key's candidate values (a searched
    # ``loss`` can bring several losses' keys). Searching one of them per configuration is refused
    # at parse time (orchestrator/space/vectorized.py).
    shared_member_keys: Callable[[dict[str, Any], dict[str, list[Any]]], dict[str, str]] | None = None
    # Runs in the driver before Ray starts, once per distinct candidate trial: what the trial needs
    # that is missing or unreadable (dataset files, a checkpoint to start from), as
    # (parameter key, problem and what to do) pairs. See orchestrator/run/preflight.py.
    check_available: Callable[[TrialParams], list[tuple[str, str]]] | None = None
    # The names the sweep reports use for this trainable's results (headline metric, table columns,
    # summary identity, learning curves, family plots); see trainables/runtime/vocabulary.py.
    vocabulary: Vocabulary = field(default_factory=Vocabulary)
    # Metrics the trial reports every epoch but that never change within it (the teacher's accuracy,
    # sample counts): MLflow logs them once per trial, as params, so they do not fill the chart grid
    # with flat lines. The results table still shows them.
    static_metrics: tuple[str, ...] = ()
    # A digest of the data a sweep trains on, from its fixed parameters and the searched keys' names,
    # for the MLflow parent run's ``w2s.dataset_digest`` tag; None when it cannot say (the dataset is searched).
    data_digest: Callable[[dict[str, Any], set[str]], str | None] | None = None


def _trainable_entry(name: str, obj: Callable[..., Any], *, params: type[TrialParams], **options: Any) -> TrainableDef:
    """The entry ``register_trainable(name, params=..., **options)(train_loop)`` records; a
    misspelt option is refused with the accepted ones, as every registry refuses them."""
    accepted = [f.name for f in fields(TrainableDef) if f.name not in ("name", "params_model", "train_loop")]
    check_keywords(f"register_trainable({name!r})", options, accepted)
    return TrainableDef(name=name, params_model=params, train_loop=obj, **options)


# Built-in families: every ``trainables/<family>/trainable.py``.
TRAINABLES: Registry[TrainableDef] = Registry("trainable", scan("trainables", "trainable"), record=_trainable_entry)
register_trainable = TRAINABLES.register
trainable_names = TRAINABLES.names
get_trainable = TRAINABLES.get
