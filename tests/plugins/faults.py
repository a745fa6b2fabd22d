"""Fault injection for the reliability tests, loaded the way users load their own extensions:
``W2S_PLUGINS=tests.plugins.faults`` (see docs/reliability.md). Nothing here is imported by the
package itself; production code has no test-only branches.

Registers:

* loss ``faulty``: cross-entropy that, at the start of a chosen epoch, turns NaN, sleeps, or
  kills its own process once (``os._exit``, as a crashed or preempted worker would die), and
  traces every epoch it starts to a file so a test can tell which epochs ran twice;
* trainable ``faulty``: a tiny digits classifier trained with the shared loop and that loss, with
  a ``prepare`` step that can leak a placement group (the stuck-sweep failure mode), an
  ``init_from`` checkpoint checked before Ray starts, and a credential-like ``api_token``
  parameter and free-form ``client_kwargs`` whose credentials must never reach MLflow;
* dataset ``absent_files``: a dataset whose files are missing, with an availability check.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Any

import torch
from pydantic import Field, model_validator

from trainables.data import DatasetName, DatasetUnavailable, dataset_issues, load_dataset, register_dataset
from trainables.losses import check_loss_params, create_loss, register_loss
from trainables.losses.base import DistillLoss, LossInputs, LossParams, soft_cross_entropy
from trainables.models import create_model
from trainables.runtime.engine import seed_everything
from trainables.runtime.session import Session, state_file_problem
from trainables.runtime.trainable import TrialContext, TrialParams, register_trainable
from trainables.runtime.vocabulary import Vocabulary
from trainables.training.classifier_loop import OptimConfig, train_classifier

LEAK_NAME = "w2s-test-leaked-pg"


def trial_label() -> str:
    """The Tune trial id, from a Tune trial or from a Train worker of one (its run is train-<id>)."""
    with warnings.catch_warnings():  # each context warns when asked from the other kind of process
        warnings.simplefilter("ignore")
        try:
            from ray import tune

            trial_id = tune.get_context().get_trial_id()
            if trial_id:
                return trial_id
        except Exception:  # noqa: BLE001
            pass
        try:
            import ray.train

            return ray.train.get_context().get_experiment_name().removeprefix("train-")
        except Exception:  # noqa: BLE001
            return "local"


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class FaultyParams(LossParams):
    nan_at_epoch: int = Field(0, ge=0, description="1-based epoch from which the loss is NaN (0: never)")
    sleep_s: float = Field(0.0, ge=0, description="sleep at the start of every epoch")
    exit_at_epoch: int = Field(0, ge=0, description="os._exit(1) at the start of this epoch, once (0: never)")
    exit_rank: int = Field(0, ge=0, description="the rank that exits")
    marker: str = Field("", description="file created when the exit happens, so it happens once")
    trace: str = Field("", description="file to append '<trial> <rank> <epoch> <pid>' to at every epoch start")


@register_loss("faulty", params=FaultyParams)
class FaultyCE(DistillLoss):
    needs_teacher = False

    def __init__(self, params: FaultyParams, **context):
        super().__init__(params, **context)
        self._epoch = -1

    def _epoch_start(self, epoch: int) -> None:
        p = self.params
        if p.trace:
            with open(p.trace, "a") as f:
                f.write(f"{trial_label()} {_rank()} {epoch} {os.getpid()}\n")
        if p.sleep_s:
            time.sleep(p.sleep_s)  # before an exit too: lets Train register the previous epoch's checkpoint
        if p.exit_at_epoch == epoch and _rank() == p.exit_rank and p.marker and not os.path.exists(p.marker):
            with open(p.marker, "w") as f:
                f.write(f"{trial_label()} rank {_rank()} pid {os.getpid()} exited at epoch {epoch}\n")
            os._exit(1)

    def forward(self, inputs: LossInputs):
        if inputs.epoch != self._epoch:
            self._epoch = inputs.epoch
            self._epoch_start(inputs.epoch + 1)
        loss = soft_cross_entropy(inputs.student_logits, inputs.targets)
        if self.params.nan_at_epoch and inputs.epoch + 1 >= self.params.nan_at_epoch:
            loss = loss * float("nan")
        return {"loss": loss, "ce": loss.detach()}


class FaultyTrialParams(TrialParams):
    dataset: DatasetName = "digits"
    epochs: int = Field(4, ge=1)
    lr: float = Field(0.05, gt=0)
    batch_size: int = Field(64, ge=1)
    warmup_epochs: int = Field(0, ge=0)
    loss_params: dict[str, Any] = Field(default_factory=dict, description="FaultyParams")
    nan_seeds: list[int] = Field(default_factory=list, description="seeds whose trials get nan_at_epoch "
                                 "(empty: every trial)")
    init_from: str | None = Field(None, description="a state-dict file to start the student from")
    leak_cpus: float = Field(0.0, ge=0, description="prepare leaks a detached placement group of this many CPUs")
    api_token: str = Field("", description="a credential-like parameter: must never reach MLflow")
    client_kwargs: dict[str, str] = Field(default_factory=dict, description="free-form keyword arguments, as a "
                                          "client library would take them: credential-like keys must never reach "
                                          "MLflow or a report file")

    @model_validator(mode="after")
    def _check(self):
        check_loss_params("faulty", self.loss_params)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self


def run_faulty(p: FaultyTrialParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    unresolved = [k for k, v in p.client_kwargs.items() if str(v).startswith("${env:")]
    if unresolved or str(p.api_token or "").startswith("${env:"):
        raise RuntimeError(f"credentials given as ${{env:NAME}} reached the trial unresolved: {unresolved}")
    data = load_dataset(p.dataset, seed=0).to(session.device)
    seed_everything(p.seed)
    loss_params = dict(p.loss_params)
    if p.nan_seeds and p.seed not in p.nan_seeds:
        loss_params["nan_at_epoch"] = 0
    model = create_model("mlp_tiny", num_classes=data.num_classes, input_shape=data.input_shape)
    if p.init_from:
        model.load_state_dict(torch.load(p.init_from, map_location="cpu"))
    return train_classifier(model=model, data=data, loss_fn=create_loss("faulty", loss_params), session=session,
                            seed=p.seed, checkpoint_every=ctx.checkpoint_every,
                            optim=OptimConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
                                              warmup_epochs=p.warmup_epochs))


def prepare_faulty(fixed: dict[str, Any], searched: set[str], ctx: TrialContext) -> dict[str, Any] | None:
    cpus = float(fixed.get("leak_cpus", 0) or 0)
    if not cpus:
        return None
    import ray
    from ray.util import placement_group

    pg = placement_group([{"CPU": cpus}], name=LEAK_NAME, lifetime="detached")
    ray.get(pg.ready(), timeout=60)
    return {"leaked_cpus": cpus}


def check_faulty_inputs(p: FaultyTrialParams) -> list[tuple[str, str]]:
    problems = dataset_issues("dataset", p.dataset)
    if p.init_from:
        problem = state_file_problem(p.init_from)
        if problem:
            problems.append(("init_from", f"the checkpoint to start from, {p.init_from}, {problem}; point init_from "
                                          "at a file written by torch.save(model.state_dict(), PATH)"))
    return problems


REPORT_SLEEP_ENV = "W2S_TEST_REPORT_SLEEP_S"


def slow_summary(rows, best):
    """The report's family summary, sleeping when the test asks (a window to interrupt the report)."""
    time.sleep(float(os.environ.get(REPORT_SLEEP_ENV, "0") or 0))
    return [f"faulty summary: {len(rows)} trials"], {}


register_trainable(
    "faulty",
    params=FaultyTrialParams,
    metric="val_acc",
    mode="max",
    description="Fault injection for tests: NaN, sleeps, process exits, leaked placement groups.",
    prepare=prepare_faulty,
    check_available=check_faulty_inputs,
    metrics_doc={"val_acc": "top-1 on the validation split", "test_acc": "top-1 on the test split",
                 "train_loss": "mean training loss"},
    vocabulary=Vocabulary(headline="test_acc", table_metrics=("test_acc",), curves=("val_acc",),
                          loss_curves=("train_loss",), summary=slow_summary),
    # a "control" to exercise the reference runs: the same trial at half the lr
    control_overrides=lambda config: {"lr": config.get("lr", 0.05) / 2},
)(run_faulty)


ABSENT_ROOT_ENV = "W2S_TEST_DATA"


def _absent_dir() -> str:
    return os.path.join(os.environ.get(ABSENT_ROOT_ENV, "/nonexistent"), "absent_files")


def absent_files_available(**_: Any) -> None:
    path = os.path.join(_absent_dir(), "train.npz")
    if not os.path.exists(path):
        raise DatasetUnavailable(f"{path} not found and this dataset cannot be downloaded; copy its files there "
                                 f"(or set {ABSENT_ROOT_ENV} to the folder that holds absent_files/)")


@register_dataset("absent_files", available=absent_files_available)
def load_absent_files():
    absent_files_available()
    raise DatasetUnavailable("absent_files: a test dataset whose files never load")
