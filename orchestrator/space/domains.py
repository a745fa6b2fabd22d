"""Searched-parameter domains: the kinds a search space may use, one domain's model, and the
``search:`` mapping parsed into domains."""
from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel

from orchestrator.errors import SpecIssue
from orchestrator.space.yaml_io import DOTTED_KEY
from trainables.core.config import get_dotted

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

    def candidate_labels(self) -> list[str]:
        """How the user names each of :meth:`candidates`: ``[0]``, ``[1]``... or ``[low]``, ``[high]``."""
        if self.kind in ("choice", "grid"):
            return [f"[{i}]" for i in range(len(self.args))]
        return ["[low]", "[high]"]

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


INT64_MAX = 2**63 - 1


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
    if kind in ("randint", "qrandint") and not all(-INT64_MAX <= x < INT64_MAX for x in args):
        # Tune samples integers with numpy's int64 (and ``randint`` adds one to the upper bound).
        return None, [SpecIssue(where, f"bounds must fit a 64-bit integer (|x| < {INT64_MAX})", args)]
    if lo >= hi:
        return None, [SpecIssue(where, "low must be below high", args)]
    if "log" in kind and lo <= 0:
        return None, [SpecIssue(where, "a log-uniform range needs low > 0", args)]
    if arity == 3 and args[2] <= 0:
        return None, [SpecIssue(where, "step must be > 0", args)]
    return Domain(kind=kind, args=list(args)), []


def parse_search(search: dict[str, Any], params: dict[str, Any]) -> tuple[dict[str, Domain], list[SpecIssue]]:
    """Every entry of ``search:`` as a domain, and the problems of those that are not one (a key
    that is not a dotted path, a malformed domain, a key also fixed under ``params``)."""
    domains: dict[str, Domain] = {}
    issues: list[SpecIssue] = []
    for key, value in search.items():
        if not DOTTED_KEY.fullmatch(str(key)):
            issues.append(SpecIssue(f"search.{key}", "parameter names are dotted paths such as loss_params.temperature"))
            continue
        domain, problems = parse_domain(key, value)
        issues += problems
        if domain is not None:
            domains[key] = domain
        if get_dotted(params, key) is not None:
            issues.append(SpecIssue(f"search.{key}", "is also fixed under params; keep one of the two"))
    return domains, issues
