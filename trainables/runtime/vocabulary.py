"""What a trainable's results are called: the names the sweep reports need and that only the
trainable knows.

The orchestrator builds every report (the printed results table, the seed-style summary, the best
trial's line, the reference runs' verdict, learning curves, plots) from a trainable's
:class:`Vocabulary` (``TrainableDef.vocabulary``) and names no trainable's metric or parameter
itself. Every field has a generic default, so a trainable that declares nothing still gets a full
report on its search metric.

Family hooks (``plots``, ``summary``) receive plain data: a pandas frame of the results and rows
that satisfy :class:`ResultRow`, never an orchestrator type.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence


class ResultRow(Protocol):
    """One trial (one configuration of a vectorised trial) as a report hook sees it."""

    @property
    def label(self) -> str: ...  # the trial id, with ``/p<k>`` for configuration k of a vectorised trial

    @property
    def status(self) -> str: ...  # completed | stopped_early | diverged | error | not_run | ... (an open set)

    @property
    def params(self) -> Mapping[str, Any]: ...  # searched key -> value

    @property
    def metrics(self) -> Mapping[str, Any]: ...  # the last reported metrics

    @property
    def history(self) -> Sequence[Mapping[str, float]]: ...  # numeric metrics per report (epoch), oldest first


NOT_HYPERPARAMETERS = ("seed", "workers")


@dataclass
class ReportData:
    """What a family plot gets: the results as a frame (one row per trial: ``status``, every
    numeric metric as a column, each searched parameter as the column ``column(key)``), the same
    trials as rows, and the sweep's search metric, mode, searched keys and log-scale keys."""

    frame: Any  # pandas.DataFrame
    rows: Sequence[ResultRow]
    metric: str
    mode: str
    keys: list[str]
    log_keys: set[str] = field(default_factory=set)
    param_prefix: str = ""
    # Searched keys whose domain is a list of values (choice, grid): drawn as categories.
    choice_keys: set[str] = field(default_factory=set)
    # The best configuration per summary group (teacher / student / method), its trials over seeds:
    # group label -> rows, best group first (the summary's entries, as the headline figures need them).
    groups: Mapping[str, Sequence[ResultRow]] = field(default_factory=dict)
    # The reference runs, when they ran: role (``reproduce`` | ``control``) -> {seed: value of
    # ``reference_metric``}.
    reference: Mapping[str, Mapping[Any, float]] = field(default_factory=dict)
    reference_metric: str | None = None
    control: str = "its control"

    @property
    def best_group(self) -> Sequence[ResultRow]:
        """The overall best configuration's trials over seeds (empty when no trial has the metric)."""
        return next(iter(self.groups.values()), ())

    def column(self, key: str) -> str:
        """The frame column of the searched parameter ``key``."""
        return self.param_prefix + key

    def present_keys(self) -> list[str]:
        """Searched keys that have a column in the frame."""
        return [k for k in self.keys if self.column(k) in self.frame]

    def hyperparameter_keys(self) -> list[str]:
        """Present searched keys that are hyperparameters: the seed and the worker count are not
        (they change how a trial runs, not what it learns), so no plot gives them a panel."""
        return [k for k in self.present_keys() if k.rsplit(".", 1)[-1] not in NOT_HYPERPARAMETERS]


@dataclass(frozen=True)
class Bar:
    """One bar of a headline figure: a quantity over seeds. ``values`` are the per-seed values (the
    dots); the orchestrator draws their mean and t confidence interval. ``panel`` groups bars that
    share an axis (one metric); ``role`` colours them the same across panels (teacher, student, ...)."""

    panel: str
    name: str
    values: tuple[float, ...]
    role: str = ""


@dataclass(frozen=True)
class Headline:
    """A family's headline figure as data: what the experiment's answer is, drawn as bars with
    per-seed dots and confidence intervals (PNG and interactive HTML) and printed as a table.
    ``notes`` are extra lines under the table (PGR per method, say)."""

    title: str
    bars: tuple[Bar, ...]
    notes: tuple[str, ...] = ()


# file name (``something.png``) -> figure builder; a builder returns None when it has nothing to show.
PlotBuilder = Callable[[ReportData], Any]
# (trial rows, the best row or None) -> (lines to print, metrics for the sweep's MLflow parent run).
# The family's headline figure: the report data -> a Headline, or None when the sweep lacks its data.
HeadlineBuilder = Callable[[ReportData], Optional[Headline]]
SummaryHook = Callable[[Sequence[ResultRow], Optional[ResultRow]], tuple[list[str], dict[str, float]]]


@dataclass(frozen=True)
class Vocabulary:
    # The headline (top-1) metric: averaged over seeds in the summary and printed, and logged on the
    # parent run as ``best_<headline>``, next to the search metric of the best trial. None, or a
    # metric no trial reports: the search metric.
    headline: str | None = None
    # Columns of the printed results table after the search metric, each shown when some trial reports it.
    table_metrics: tuple[str, ...] = ()
    # What the reference runs (the best config and its control, over seeds) are compared on and what
    # their progress lines show. None: the headline, else the search metric.
    reference_metric: str | None = None
    # How the control of the reference runs is named in the verdict ("the best config beat <control>").
    control: str = "its control"
    # Summary group columns: display name -> config keys that can name it, first found wins (a
    # dict value shows its ``model`` entry). Searched keys with text values are grouped on as well.
    identity: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # More summary columns, each averaged over the seeds of a group's entry (mean ± std) and shown
    # when some trial reports it (the few-shot accuracies per shot count).
    summary_metrics: tuple[str, ...] = ()
    # Learning curves: the per-epoch metric plotted when the search metric is not reported every
    # epoch (first one reported wins), and the loss for the second panel (first one reported wins).
    curves: tuple[str, ...] = ()
    loss_curves: tuple[str, ...] = ()
    # Family-specific figures, written next to the generic ones under plots/.
    plots: Mapping[str, PlotBuilder] = field(default_factory=dict)
    # The family's headline figure (``headline.png`` / ``headline.html`` and a printed table): the
    # experiment's answer at a glance. None: the best configuration per summary group on the headline metric.
    headline_figure: HeadlineBuilder | None = None
    # Family-specific lines of the final report and metrics for the parent run.
    summary: SummaryHook | None = None
    # A per-worker batch-size parameter: reference runs on another worker count rescale it so the
    # global batch stays the same. None: nothing to rescale.
    per_worker_batch: str | None = None
    # The parameter that says how many epochs a trial trains (every report carries ``epoch``): a
    # trial that ends before it was stopped early (ASHA, a stopper), and ASHA's ``max_t`` defaults to it.
    budget: str = "epochs"

    def headline_of(self, metric: str) -> str:
        return self.headline or metric

    def reference_of(self, metric: str) -> str:
        return self.reference_metric or self.headline_of(metric)

    def present_table_metrics(self, metrics: Sequence[Mapping[str, Any]]) -> list[str]:
        """The table metrics some trial reports, in declared order."""
        return [m for m in self.table_metrics if any(m in ms for ms in metrics)]

    def identity_keys(self) -> set[str]:
        return {key for keys in self.identity.values() for key in keys}
