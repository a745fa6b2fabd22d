"""A search space against its trainable: the metric must be one the trainable reports, and every
candidate trial config (:mod:`orchestrator.space.candidates`, one value at a time) must pass the
trainable's parameter model, each problem reported against the key the user wrote
(``params.epochs``, ``search.lr.uniform[low]``, ``points_to_evaluate[0].seed``)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ValidationError

from orchestrator.errors import SpecIssue
from orchestrator.space.candidates import Candidate, candidates
from orchestrator.space.domains import DOMAIN_KINDS
from orchestrator.space.model import SweepSpec
from trainables.core.config import did_you_mean, fields_at, MISSING, Problem, get_dotted, problems
from trainables.core.registry import UNKNOWN_KEYWORDS

if TYPE_CHECKING:
    from trainables.runtime.trainable import TrainableDef

# ``search.<key>.<kind>[i]``: where one searched value of ``search.<key>`` is reported.
_SEARCHED_VALUE = re.compile(rf"^(search\..+?)\.(?:{'|'.join(DOMAIN_KINDS)})(?:\[\w+\])?$")
# A model-level check (no location) names the offending key itself: "loss_params.x: ...".
_NAMED = re.compile(r"^([A-Za-z0-9_.]+): (.*)$", re.S)


def related(a: str, b: str) -> bool:
    """The dotted keys are the same, or one holds the other (``teacher`` and ``teacher.model``)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def param_issues(params_model: type[BaseModel], config: dict[str, Any],
                 describe: Callable[[str], str | None]) -> list[SpecIssue]:
    """Validate one trial config; ``describe(param_key)`` maps the failing parameter to the spec
    key the user wrote, or returns None when the problem is not from that source."""
    try:
        params_model.model_validate(config)
        return []
    except ValidationError as exc:
        issues = []
        for problem in problems(exc):
            param_key, message, value = _named_key(problem, config)
            where = describe(param_key)
            if where is None:
                continue
            if problem.kind == "extra_forbidden":
                here = fields_at(params_model, param_key)  # the fields of the model the key is in
                known = ", ".join(sorted(here))
                hint = did_you_mean(param_key.rsplit(".", 1)[-1], here)
                # unknown whatever its value: one line for the searched key, not one per value
                issues.append(SpecIssue(_SEARCHED_VALUE.sub(r"\1", where), f"unknown parameter{hint} (known: {known})"))
            elif UNKNOWN_KEYWORDS in message and _SEARCHED_VALUE.match(where):  # a loss's or model's: the same
                issues.append(SpecIssue(_SEARCHED_VALUE.sub(r"\1", where), message))
            else:
                issues.append(SpecIssue(where, message, value))
        return issues


def _named_key(problem: Problem, config: dict[str, Any]) -> tuple[str, str, Any]:
    """(parameter key, message, offending value) of a problem. A model-level check names the
    offending key in its message, relative to the model it checks (``model_kwargs.widht: ...`` from
    the ``teacher`` model is ``teacher.model_kwargs.widht``)."""
    m = _NAMED.match(problem.message) if problem.kind in ("", "value_error") else None
    if m is None:
        return problem.key, problem.message, problem.value if problem.key else MISSING
    key = f"{problem.key}.{m.group(1)}" if problem.key else m.group(1)
    message = m.group(2)
    return key, message[:1].lower() + message[1:], get_dotted(config, key, MISSING)


def _describer(c: Candidate, spec: SweepSpec) -> Callable[[str], str | None]:
    """Which spec key a problem of candidate ``c`` belongs to (None: reported by another candidate)."""
    if c.kind == "base":
        return lambda param_key: _from_params(param_key, spec)
    if c.kind == "value":
        return lambda param_key: c.where if related(param_key, c.keys[0]) else None
    return lambda param_key: next((f"{c.where}.{k}" for k in c.keys if related(param_key, k)), None)


def _from_params(param_key: str, spec: SweepSpec) -> str | None:
    if any(related(param_key, k) for k in spec.domains):
        return None  # reported against the search key
    if param_key.split(".")[0].split("[")[0] == "workers":
        return "resources.workers"
    return f"params.{param_key}" if param_key else "params"


def metric_issues(spec: SweepSpec, defn: TrainableDef) -> list[SpecIssue]:
    if spec.metric in defn.metrics_doc or spec.metric in ("epoch",):
        return []
    return [SpecIssue("metric", f"is not reported by trainable {spec.trainable!r} "
                                f"(reported: {', '.join(sorted(defn.metrics_doc))})", spec.metric)]


def point_issues(spec: SweepSpec, defn: TrainableDef, i: int) -> list[SpecIssue]:
    """What Ray Tune would fail on (after Ray has started) in point ``i``: a mapping value (Tune
    applies a point leaf by leaf onto the param space), a key no trial has a value for."""
    point = spec.points_to_evaluate[i]
    issues = [SpecIssue(f"points_to_evaluate[{i}].{k}", "a point cannot set a mapping; set its fields with dotted "
                        f"keys ({k}.{next(iter(value), 'field')}: ...), each searched, or search the mappings "
                        "with grid")
              for k, value in point.items() if isinstance(value, dict)]
    unknown = [k for k in point if k not in spec.domains and k != "workers" and get_dotted(spec.params, k) is None
               and k.split(".")[0] in defn.params_model.model_fields]
    issues += [SpecIssue(f"points_to_evaluate[{i}].{k}", "is neither searched nor fixed; add it to search or params "
                         "so every trial has a value") for k in unknown]
    return issues


def trial_issues(spec: SweepSpec, defn: TrainableDef) -> list[SpecIssue]:
    """Every problem of ``spec`` against trainable ``defn``: the metric, then each candidate config."""
    issues = metric_issues(spec, defn)
    for c in candidates(spec):
        found = param_issues(defn.params_model, c.config, _describer(c, spec))
        if c.kind == "value":
            for issue in found:
                if issue.value is MISSING and issue.key == c.where:  # not one about the key whatever its value
                    issue.value = c.value
        issues += found
        if c.point is not None:
            issues += point_issues(spec, defn, c.point)
    return issues
