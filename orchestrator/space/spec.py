"""Search-space files: YAML in, a validated :class:`SweepSpec` out, before Ray starts.

The format is documented in ``docs/search_spaces.md``. Every problem is reported as
``<file>: <key>: <what is wrong> (got <value>)`` and nothing expensive runs until the whole file,
including every searched value against the trainable's parameter schema, validates.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.errors import MISSING, SpecError, SpecIssue

# --------------------------------------------------------------------------------------------
# YAML: PyYAML follows YAML 1.1, where ``1e-3`` is a *string*. Researchers write it everywhere,
# so resolve exponent floats without a dot as floats too.
# --------------------------------------------------------------------------------------------


class _SpecLoader(yaml.SafeLoader):
    pass


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str, file: str | None = None) -> Any:
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError.single(file, "", f"not valid YAML: {where}{problem}") from None


# --------------------------------------------------------------------------------------------
# Searched-parameter domains
# --------------------------------------------------------------------------------------------

DOMAIN_KINDS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform", "qloguniform", "qrandint")


class Domain(BaseModel):
    """One searched parameter: exactly one of the kinds in :data:`DOMAIN_KINDS`."""

    kind: str
    args: list[Any]

    def candidates(self) -> list[Any]:
        """Values to validate against the trainable's schema: every listed value, or the bounds."""
        if self.kind in ("choice", "grid"):
            return list(self.args)
        lo, hi = self.args[0], self.args[1]
        if self.kind in ("randint", "qrandint"):
            return [int(lo), int(hi)]
        return [lo, hi]

    def to_tune(self):
        from ray import tune

        a = self.args
        return {
            "choice": lambda: tune.choice(a),
            "grid": lambda: tune.grid_search(a),
            "uniform": lambda: tune.uniform(a[0], a[1]),
            "loguniform": lambda: tune.loguniform(a[0], a[1]),
            "randint": lambda: tune.randint(int(a[0]), int(a[1]) + 1),  # inclusive upper bound
            "quniform": lambda: tune.quniform(a[0], a[1], a[2]),
            "qloguniform": lambda: tune.qloguniform(a[0], a[1], a[2]),
            "qrandint": lambda: tune.qrandint(int(a[0]), int(a[1]), int(a[2])),
        }[self.kind]()

    def describe(self) -> str:
        return f"{self.kind}({', '.join(repr(x) for x in self.args)})"

    @property
    def grid_size(self) -> int:
        return len(self.args) if self.kind == "grid" else 1


def parse_domain(key: str, raw: Any) -> tuple[Domain | None, list[SpecIssue]]:
    where = f"search.{key}"
    if not isinstance(raw, dict) or len(raw) != 1:
        return None, [SpecIssue(where, "a searched parameter is a mapping with exactly one of "
                                       f"{', '.join(DOMAIN_KINDS)}; put fixed values under params", raw)]
    kind, args = next(iter(raw.items()))
    where = f"{where}.{kind}"
    if kind not in DOMAIN_KINDS:
        return None, [SpecIssue(f"search.{key}", f"unknown search kind {kind!r}; use one of {', '.join(DOMAIN_KINDS)}")]
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            return None, [SpecIssue(where, "needs a non-empty list of values", args)]
        return Domain(kind=kind, args=args), []
    arity = 3 if kind.startswith("q") else 2
    shape = "[low, high, step]" if arity == 3 else "[low, high]"
    if not isinstance(args, list) or len(args) != arity:
        return None, [SpecIssue(where, f"needs {shape}", args)]
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in args):
        return None, [SpecIssue(where, f"{shape} must be finite numbers", args)]
    lo, hi = args[0], args[1]
    if kind in ("randint", "qrandint") and not all(float(x).is_integer() for x in args):
        return None, [SpecIssue(where, "bounds and step must be integers", args)]
    if lo >= hi:
        return None, [SpecIssue(where, "low must be below high", args)]
    if "log" in kind and lo <= 0:
        return None, [SpecIssue(where, "a log-uniform range needs low > 0", args)]
    if arity == 3 and args[2] <= 0:
        return None, [SpecIssue(where, "step must be > 0", args)]
    return Domain(kind=kind, args=list(args)), []


# --------------------------------------------------------------------------------------------
# The sweep spec
# --------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchAlgSpec(_Strict):
    type: Literal["random", "optuna"] = "random"
    seed: int | None = None


class SchedulerSpec(_Strict):
    type: Literal["fifo", "asha"] = "fifo"
    grace_period: int = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1, description="epochs of the longest trial (default: params.epochs)")
    brackets: int = Field(1, ge=1)


class ResourcesSpec(_Strict):
    workers: int = Field(1, ge=1, description="DDP workers per trial; 1 runs in the Tune trainable itself")
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    driver_cpus: float = Field(0.0, ge=0, description="CPU held by the Tune driver of a multi-worker trial; 0 "
                               "holds one unit of the TRAIN_DRIVER custom resource instead")
    max_concurrent_trials: int | None = Field(None, ge=1)

    @field_validator("gpus_per_worker")
    @classmethod
    def _whole_or_fraction(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError("more than one GPU per worker must be a whole number")
        return v


class StopSpec(_Strict):
    max_iterations: int | None = Field(None, ge=1, description="stop a trial after this many reports")
    target: float | None = Field(None, description="stop a trial once its metric reaches this value")


class CheckpointSpec(_Strict):
    every: int = Field(5, ge=0, description="checkpoint every N epochs (0: only at the end)")
    keep: int = Field(2, ge=1, description="checkpoints kept per trial")


class ControlSpec(_Strict):
    enabled: bool = True
    seeds: int = Field(3, ge=1, le=20)
    workers: int | None = Field(None, ge=1, description="workers for reference runs (default: the best trial's)")


class FailureSpec(_Strict):
    max_failures: int = Field(0, ge=0, description="retries of a failed trial (from its last checkpoint)")


class WatchdogSpec(_Strict):
    timeout_s: float = Field(900.0, ge=0, description="warn, with the likely cause, when no trial has made "
                             "progress for this long while trials run or wait (0: off)")
    abort_after_s: float | None = Field(None, gt=0, description="then stop the sweep (resumable) after this long "
                                        "without progress")

    @model_validator(mode="after")
    def _abort_after_timeout(self):
        if self.abort_after_s is not None and self.abort_after_s < self.timeout_s:
            raise ValueError(f"abort_after_s ({self.abort_after_s:g}) must be at least timeout_s ({self.timeout_s:g})")
        return self


class SweepSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")
    description: str = ""
    trainable: str
    experiment: str | None = Field(None, description="MLflow experiment (default: the sweep name)")
    params: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    points_to_evaluate: list[dict[str, Any]] = Field(default_factory=list)
    metric: str | None = None
    mode: Literal["max", "min"] | None = None
    num_samples: int = Field(1, ge=1)
    search_alg: SearchAlgSpec = Field(default_factory=SearchAlgSpec)
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    stop: StopSpec = Field(default_factory=StopSpec)
    time_budget_s: float | None = Field(None, gt=0)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    control: ControlSpec = Field(default_factory=ControlSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    watchdog: WatchdogSpec = Field(default_factory=WatchdogSpec)

    # Filled in by load_spec, not by the file.
    source_file: str | None = Field(None, exclude=True)
    domains: dict[str, Domain] = Field(default_factory=dict, exclude=True)
    # Searched keys that vary inside a vectorised trial rather than across trials.
    vectorized_keys: list[str] = Field(default_factory=list, exclude=True)

    @property
    def experiment_name(self) -> str:
        return self.experiment or self.name

    def fixed_config(self) -> dict[str, Any]:
        """Fixed parameters plus ``workers``: the part of every trial's config that is not searched."""
        cfg = copy.deepcopy(self.params)
        cfg.setdefault("workers", self.resources.workers)
        return cfg

    def workers_values(self) -> list[int]:
        values = {int(self.resources.workers)}
        if "workers" in self.domains:
            values |= {int(v) for v in self.domains["workers"].candidates()}
            d = self.domains["workers"]
            if d.kind in ("randint", "qrandint"):
                values |= set(range(int(d.args[0]), int(d.args[1]) + 1))
        values |= {int(p["workers"]) for p in self.points_to_evaluate if "workers" in p}
        return sorted(values)

    def expected_trials(self) -> int:
        grid = math.prod(d.grid_size for k, d in self.domains.items() if k not in self.vectorized_keys)
        return grid * self.num_samples

    def resolved_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def set_dotted(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = cfg
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def get_dotted(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def apply_overrides(raw: dict[str, Any], overrides: list[str], file: str | None) -> dict[str, Any]:
    """``--set key=value`` on the raw YAML mapping; ``value`` is parsed as YAML."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise SpecError.single(file, "--set", "expects key=value", item)
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
            raise SpecError.single(file, "--set", "the key must be a dotted path such as params.epochs", item)
        value = parse_yaml(text, file) if text.strip() else None
        if key.startswith("search."):
            # A searched key holds one dotted parameter name; do not split it into nested dicts.
            raw.setdefault("search", {})
            raw["search"][key[len("search."):]] = value
        else:
            set_dotted(raw, key, value)
    return raw


def _loc_to_key(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_issues(exc: ValidationError, prefix: str) -> list[SpecIssue]:
    issues = []
    for err in exc.errors():
        loc = _loc_to_key(tuple(err["loc"]))
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        if err["type"] == "extra_forbidden":
            issues.append(SpecIssue(key, "unknown key"))
        elif err["type"] == "missing":
            issues.append(SpecIssue(key, "is required"))
        else:
            issues.append(SpecIssue(key, msg[0].lower() + msg[1:], err.get("input")))
    return issues


def _trial_param_issues(params_model, config: dict[str, Any], describe) -> list[SpecIssue]:
    """Validate one candidate trial config; ``describe(param_key)`` maps the failing parameter
    to the spec key the user wrote, or returns None when the problem is not from that source."""
    try:
        params_model.model_validate(config)
        return []
    except ValidationError as exc:
        issues = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            param_key = _loc_to_key(loc)
            value = err.get("input", MISSING)
            # Model-level checks name the offending key themselves ("loss_params.x: ...").
            m = re.match(r"^([A-Za-z0-9_.]+): (.*)$", msg, re.S) if not loc else None
            if m:
                param_key, msg = m.group(1), m.group(2)
                value = get_dotted(config, param_key, MISSING)
            elif not loc:
                value = MISSING
            where = describe(param_key)
            if where is None:
                continue
            if err["type"] == "extra_forbidden":
                known = ", ".join(sorted(params_model.model_fields))
                issues.append(SpecIssue(where, f"unknown parameter (known: {known})"))
            else:
                issues.append(SpecIssue(where, msg[0].lower() + msg[1:], value))
        return issues


def _sample_value(domain: Domain) -> Any:
    return domain.candidates()[0]


def load_spec(path: str, overrides: list[str] | None = None, num_samples: int | None = None) -> SweepSpec:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise SpecError.single(path, "", f"cannot read the search-space file: {exc.strerror}") from None
    return parse_spec(text, path, overrides or [], num_samples)


def parse_spec(text: str, file: str | None = None, overrides: list[str] | None = None,
               num_samples: int | None = None) -> SweepSpec:
    from trainables.runtime.trainable import get_trainable, trainable_names

    raw = parse_yaml(text, file)
    if raw is None:
        raise SpecError.single(file, "", "the file is empty")
    if not isinstance(raw, dict):
        raise SpecError.single(file, "", "the top level must be a mapping of keys", type(raw).__name__)
    raw = apply_overrides(raw, overrides or [], file)
    if num_samples is not None:
        raw["num_samples"] = num_samples

    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(file, _pydantic_issues(exc, "")) from None
    spec.source_file = file

    if spec.trainable not in trainable_names():
        raise SpecError.single(file, "trainable", f"unknown trainable; known: {', '.join(trainable_names())}",
                               spec.trainable)
    defn = get_trainable(spec.trainable)
    issues: list[SpecIssue] = []

    # Searched parameters.
    domains: dict[str, Domain] = {}
    for key, value in spec.search.items():
        if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", str(key)):
            issues.append(SpecIssue(f"search.{key}", "parameter names are dotted paths such as loss_params.temperature"))
            continue
        domain, problems = parse_domain(key, value)
        issues += problems
        if domain is not None:
            domains[key] = domain
        if get_dotted(spec.params, key) is not None:
            issues.append(SpecIssue(f"search.{key}", "is also fixed under params; keep one of the two"))
    spec.domains = domains
    from orchestrator.space.vectorized import check_spec as check_vectorized

    issues += check_vectorized(spec)
    if spec.search_alg.type == "optuna":
        for key, d in domains.items():
            if d.kind == "grid":
                issues.append(SpecIssue(f"search.{key}.grid", "the optuna search algorithm cannot run grid "
                                        "search; use choice, or search_alg.type: random"))
    if issues:
        raise SpecError(file, issues)

    # Metric and mode default to the trainable's.
    spec.metric = spec.metric or defn.metric
    spec.mode = spec.mode or defn.mode
    if spec.metric not in defn.metrics_doc and spec.metric not in ("epoch",):
        issues.append(SpecIssue("metric", f"is not reported by trainable {spec.trainable!r} "
                                          f"(reported: {', '.join(sorted(defn.metrics_doc))})", spec.metric))

    # Every value a trial can see must validate against the trainable's schema.
    fixed = spec.fixed_config()
    base = copy.deepcopy(fixed)
    for key, d in domains.items():
        set_dotted(base, key, _sample_value(d))

    def from_params(param_key: str) -> str | None:
        root = param_key.split(".")[0].split("[")[0]
        if any(param_key == k or param_key.startswith(k + ".") or k.startswith(param_key + ".") for k in domains):
            return None  # reported against the search key below
        if root == "workers":
            return "resources.workers"
        return f"params.{param_key}" if param_key else "params"

    issues += _trial_param_issues(defn.params_model, base, from_params)
    for key, d in domains.items():
        for i, value in enumerate(d.candidates()):
            cfg = copy.deepcopy(base)
            set_dotted(cfg, key, value)
            index = f"[{i}]" if d.kind in ("choice", "grid") else ("[low]" if i == 0 else "[high]")

            def from_search(param_key: str, key=key, index=index, kind=d.kind) -> str | None:
                if param_key == key or param_key.startswith(key + ".") or key.startswith(param_key + "."):
                    return f"search.{key}.{kind}{index}"
                return None

            for issue in _trial_param_issues(defn.params_model, cfg, from_search):
                if issue.value is MISSING:
                    issue.value = value
                issues.append(issue)
    for i, point in enumerate(spec.points_to_evaluate):
        cfg = copy.deepcopy(base)
        for key, value in point.items():
            set_dotted(cfg, key, value)
        flat_keys = list(point)

        def from_point(param_key: str, i=i, flat_keys=flat_keys) -> str | None:
            for k in flat_keys:
                if param_key == k or param_key.startswith(k + ".") or k.startswith(param_key + "."):
                    return f"points_to_evaluate[{i}].{k}"
            return None

        issues += _trial_param_issues(defn.params_model, cfg, from_point)
        # Ray Tune applies a point leaf by leaf onto the param space and fails on a mapping value
        # (after Ray has started): ask for dotted scalar keys instead.
        for k, value in point.items():
            if isinstance(value, dict):
                example = f"{k}.{next(iter(value), 'field')}: ..."
                issues.append(SpecIssue(f"points_to_evaluate[{i}].{k}", "a point cannot set a mapping; set "
                                        f"its fields with dotted keys ({example}), each searched, or "
                                        "search the mappings with grid"))
        unknown = [k for k in point if k not in domains and k != "workers" and get_dotted(spec.params, k) is None
                   and k.split(".")[0] in defn.params_model.model_fields]
        for k in unknown:
            issues.append(SpecIssue(f"points_to_evaluate[{i}].{k}", "is neither searched nor fixed; add it to "
                                    "search or params so every trial has a value"))

    # Scheduler consistency (only meaningful once the parameters themselves are valid).
    if spec.scheduler.type == "asha" and not issues:
        epochs = fixed.get("epochs")
        max_t = spec.scheduler.max_t or (epochs if isinstance(epochs, int) else None)
        if max_t is None:
            issues.append(SpecIssue("scheduler.max_t", "is required for asha when params.epochs is not fixed"))
        elif spec.scheduler.grace_period > max_t:
            issues.append(SpecIssue("scheduler.grace_period", f"exceeds max_t ({max_t})", spec.scheduler.grace_period))
        spec.scheduler.max_t = max_t
    if spec.control.enabled and defn.control_overrides is None:
        spec.control.enabled = False
    if issues:
        raise SpecError(file, _dedupe(issues))
    return spec


def _dedupe(issues: list[SpecIssue]) -> list[SpecIssue]:
    seen, out = set(), []
    for issue in issues:
        ident = (issue.key, issue.message)
        if ident not in seen:
            seen.add(ident)
            out.append(issue)
    return out


def spec_to_yaml(spec: SweepSpec) -> str:
    return yaml.safe_dump(spec.resolved_dict(), sort_keys=False)
