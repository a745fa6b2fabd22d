"""A trainable that does nothing but report: what bench/overhead.py pushes through ``run_sweep``
to measure the orchestration cost per trial (loaded with ``W2S_PLUGINS=bench.trivial_trainable``)."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from trainables.runtime.session import Session
from trainables.runtime.trainable import TrialContext, TrialParams, register_trainable


class TrivialParams(TrialParams):
    x: float = Field(0.0, description="reported back as the score")
    epochs: int = Field(1, ge=1)


@register_trainable("bench_trivial", params=TrivialParams, metric="score", mode="max",
                    description="Reports its parameter and stops (orchestration overhead benchmark).",
                    metrics_doc={"score": "the parameter x"})
def run_trivial(p: TrivialParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for epoch in range(p.epochs):
        metrics = {"epoch": epoch + 1, "score": p.x}
        session.report(metrics)
    return metrics

