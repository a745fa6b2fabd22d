"""docs/metrics.md's tables are what docs/render_metrics.py renders from the trainables' own
declarations now, and name every metric each built-in trainable documents."""
from __future__ import annotations

from docs.render_metrics import BUILT_IN, DOC, render_all, with_tables


def test_the_glossary_is_current_and_complete():
    from trainables.runtime.trainable import get_trainable

    with open(DOC) as f:
        doc = f.read()
    assert with_tables(doc, render_all()) == doc, "docs/metrics.md is stale: run docs/render_metrics.py"
    for name in BUILT_IN:
        d = get_trainable(name)
        assert d.metrics_doc and all(f"| `{m}` |" in doc for m in d.metrics_doc), name
        assert d.metric in d.metrics_doc, f"{name}'s search metric is undocumented"
