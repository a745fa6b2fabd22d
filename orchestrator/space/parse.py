"""``parse_spec``: a search-space file to a validated :class:`SweepSpec`, before Ray starts.

The format is documented in ``docs/search_spaces.md``. Every problem is reported as
``<file>: <key>: <what is wrong> (got <value>)``, and nothing expensive runs until the whole file,
including every searched value against the trainable's parameter schema, validates. The stages,
each a function below; the first three stop at their own problems, so that later ones see a sound
input, and the last two report theirs together:

1. :func:`read_raw`: YAML text, ``--set`` overrides and ``--num-samples`` to a raw mapping;
2. :func:`schema`: the raw mapping against the :class:`SweepSpec` model, and the trainable looked
   up (its metric and mode are the defaults);
3. :func:`expand`: ``search:`` to domains, and the keys a vectorised trial varies inside itself;
4. :func:`validate`: the metric, and every candidate trial config against the trainable's
   parameter model (:mod:`orchestrator.space.validate`);
5. :func:`finish`: scheduler and control defaults that need a valid space.

The resource plan (workers, CPUs and GPUs per trial against a cluster) is not a parsing stage: it
needs the cluster, so the run layer makes it (:func:`orchestrator.run.resources.plan_resources`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from orchestrator.errors import SpecError, SpecIssue
from orchestrator.space import vectorized
from orchestrator.space.domains import parse_search
from orchestrator.space.model import SweepSpec
from orchestrator.space.validate import trial_issues
from orchestrator.space.yaml_io import apply_overrides, parse_mapping
from trainables.core.config import did_you_mean, fields_at, problems

if TYPE_CHECKING:
    from trainables.runtime.trainable import TrainableDef


def load_spec(path: str, overrides: list[str] | None = None, num_samples: int | None = None) -> SweepSpec:
    return parse_spec(read_space_file(path), path, overrides or [], num_samples)


def read_space_file(path: str) -> str:
    """The search-space file's text: UTF-8, no NUL bytes (a binary file is a user error, not a crash)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SpecError.single(path, "", f"cannot read the search-space file: {exc.strerror}") from None
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError.single(path, "", f"not a text (UTF-8) YAML file: byte {exc.start} is {data[exc.start:exc.start + 1]!r}; "
                               "is this the search space?") from None


def parse_spec(text: str, file: str | None = None, overrides: list[str] | None = None,
               num_samples: int | None = None) -> SweepSpec:
    try:
        spec, defn = schema(read_raw(text, file, overrides, num_samples), file)
        expand(spec, defn)
        issues = validate(spec, defn)
        issues += finish(spec, defn, valid=not issues)
        if issues:
            raise SpecError(file, _dedupe(issues))
    except SpecError as exc:
        raise _blame_overrides(exc, overrides or []) from None
    return spec


def _param_path(key: str) -> str:
    """``params.x.y`` and ``search.x.y`` both concern parameter ``x.y`` (a searched key's domain
    keys, ``search.lr.log_uniform``, concern ``lr``)."""
    return key.split(".", 1)[1] if key.startswith(("params.", "search.")) else key


def _blame_overrides(exc: SpecError, overrides: list[str]) -> SpecError:
    """Problems in a value a ``--set`` wrote name that ``--set`` rather than the file: the file may
    be fine, and the user looks at the command line."""
    sets = [(item.split("=", 1)[0].strip(), item) for item in overrides if "=" in item]
    if not sets:
        return exc
    for issue in exc.issues:
        if issue.origin or not issue.key or issue.key == "--set":
            continue
        mine = _param_path(issue.key)
        for key, item in reversed(sets):  # the last --set of a key wins, as it did when applied
            theirs = _param_path(key)
            if mine == theirs or mine.startswith(theirs + ".") or theirs.startswith(mine + "."):
                issue.origin = f"--set {item}"
                break
    return SpecError(exc.file, exc.issues)


def read_raw(text: str, file: str | None, overrides: list[str] | None = None,
             num_samples: int | None = None) -> dict[str, Any]:
    """Stage 1: the file's mapping with the command line's changes applied."""
    raw = apply_overrides(parse_mapping(text, file), overrides or [], file)
    if num_samples is not None:
        raw["num_samples"] = num_samples
    return raw


def schema(raw: dict[str, Any], file: str | None) -> tuple[SweepSpec, TrainableDef]:
    """Stage 2: the spec model (every key known, every value of the right type) and its trainable;
    the metric and mode default to the trainable's."""
    from trainables.runtime.trainable import get_trainable, trainable_names

    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(file, [SpecIssue(p.key, _with_hint(p), p.value) for p in problems(exc)]) from None
    spec.source_file = file
    if spec.trainable not in trainable_names():
        raise SpecError.single(file, "trainable", f"unknown trainable; known: {', '.join(trainable_names())}",
                               spec.trainable)
    defn = get_trainable(spec.trainable)
    spec.metric = spec.metric or defn.metric
    spec.mode = spec.mode or defn.mode
    spec.sharded_prepare = defn.sharded_prepare
    return spec, defn


def _with_hint(problem) -> str:
    """An unknown key of the file gets the closest known key at its place (``serach`` -> ``search``)."""
    if problem.kind != "extra_forbidden":
        return problem.message
    return problem.message + did_you_mean(problem.key.rsplit(".", 1)[-1], fields_at(SweepSpec, problem.key))


def expand(spec: SweepSpec, defn: TrainableDef) -> SweepSpec:
    """Stage 3: ``spec.domains`` and ``spec.vectorized_keys`` filled in from ``search:``."""
    spec.domains, issues = parse_search(spec.search, spec.params)
    found = vectorized.check_spec(spec, tuple(defn.vectorized_keys))
    spec.vectorized_keys = found.keys
    issues += found.issues
    if spec.sharded_prepare and "workers" in spec.domains:
        issues.append(SpecIssue("search.workers", f"{spec.trainable} trials train on one worker each; "
                                f"resources.workers shards its {spec.sharded_prepare}, so it is not searched"))
    if spec.search_alg.type == "optuna":
        issues += [SpecIssue(f"search.{key}.grid", "the optuna search algorithm cannot run grid search; use choice, "
                             "or search_alg.type: random") for key, d in spec.domains.items() if d.kind == "grid"]
    if issues:
        raise SpecError(spec.source_file, issues)
    return spec


def validate(spec: SweepSpec, defn: TrainableDef) -> list[SpecIssue]:
    """Stage 4: the problems of the spec against its trainable (see orchestrator.space.validate)."""
    return trial_issues(spec, defn)


def finish(spec: SweepSpec, defn: TrainableDef, valid: bool) -> list[SpecIssue]:
    """Stage 5: ASHA's ``max_t`` (default: the trainable's epoch budget, ``params.epochs`` for the
    built-ins; checked only once the parameters are valid), and no control runs for a trainable
    that has no control."""
    issues = []
    if spec.scheduler.type == "asha" and valid:
        budget = defn.vocabulary.budget
        epochs = spec.params.get(budget)
        if isinstance(epochs, float) and epochs.is_integer():
            epochs = int(epochs)  # 1e3 in YAML is a float; the parameter model took it as a whole number
        max_t = spec.scheduler.max_t or (epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else None)
        if max_t is None:
            issues.append(SpecIssue("scheduler.max_t", f"is required for asha when params.{budget} is not fixed"))
        elif spec.scheduler.grace_period > max_t:
            issues.append(SpecIssue("scheduler.grace_period", f"exceeds max_t ({max_t})", spec.scheduler.grace_period))
        spec.scheduler.max_t = max_t
    if spec.control.enabled and defn.control_overrides is None:
        spec.control.enabled = False
    return issues


def _dedupe(issues: list[SpecIssue]) -> list[SpecIssue]:
    seen, out = set(), []
    for issue in issues:
        ident = (issue.key, issue.message)
        if ident not in seen:
            seen.add(ident)
            out.append(issue)
    return out
