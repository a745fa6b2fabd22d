"""The distillation headline figure, declared in the trainable's vocabulary: the teacher, the best
student and its no-teacher control on the reference metric (``test_acc``), each over seeds.

The student and the control come from the reference runs (the best config and its control re-run
on the same seeds) when they ran; without them the best configuration's own seeds stand in for the
student, and there is no control bar. The teacher's bar is its accuracy as the best configuration's
trials report it (``teacher_test_acc``; one value per distinct teacher run).
Hooks get plain data (:mod:`trainables.runtime.vocabulary`), never an orchestrator type.
"""
from __future__ import annotations

from trainables.core.stats import finite
from trainables.runtime.vocabulary import Bar, Headline, ReportData

METRIC = "test_acc"
TEACHER_METRIC = "teacher_test_acc"


def distill_headline(data: ReportData) -> Headline | None:
    metric = data.reference_metric or METRIC
    rows = data.best_group
    bars = []
    teacher = finite(r.metrics.get(TEACHER_METRIC) for r in rows)
    if teacher:
        bars.append(Bar(metric, "teacher", tuple(teacher), "teacher"))
    reproduced = data.reference.get("reproduce") or {}
    if reproduced:
        bars.append(Bar(metric, "best student (reference runs)", tuple(finite(reproduced.values())), "student"))
    else:
        student = finite(r.metrics.get(metric) for r in rows)
        if student:
            bars.append(Bar(metric, "best student (sweep seeds)", tuple(student), "student"))
    control = data.reference.get("control") or {}
    if control:
        bars.append(Bar(metric, data.control.removeprefix("its ").removeprefix("the "), tuple(finite(control.values())),
                        "control"))
    if not any(b.role == "student" for b in bars):
        return None
    title = (f"distillation: teacher, best student and {data.control} on {metric}" if control else
             f"distillation: teacher and best student on {metric} (no reference runs, so no bar "
             f"for the {data.control.removeprefix('its ').removeprefix('the ')})")
    return Headline(title=title, bars=tuple(bars))
