"""Ray's log deduplication must not hold back a trial's stage lines: two trials' lines differ only
in their numbers, and Ray would print the second one under the sweep's report, at shutdown."""
import subprocess
import sys
import textwrap

from tests.conftest import REPO

# In a fresh interpreter: ray reads RAY_DEDUP_LOGS_ALLOW_REGEX when it is first imported, as in a
# `run_sweep.py` process, which imports orchestrator.cli first.
PROBE = textwrap.dedent("""
    import json, os, sys
    os.environ.pop("RAY_DEDUP_LOGS_ALLOW_REGEX", None)
    import orchestrator.cli  # noqa: F401
    from ray._private.ray_logging import stdout_deduplicator as dedup
    from trainables.runtime.stages import StageSession

    import contextlib, io

    def printed(text):  # as a stage in a trial prints it (the default say)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            StageSession("student cnn (Sel-CL stage, digits)", 10).say(text)
        return buf.getvalue().rstrip()

    def shown(line_a, line_b):
        first = dedup.deduplicate({"ip": "n", "pid": 1, "lines": [line_a]})
        second = dedup.deduplicate({"ip": "n", "pid": 2, "lines": [line_b]})
        return [l for batch in first + second for l in batch["lines"]]

    stage = [printed(f"student cnn (Sel-CL stage, digits): epoch 10/10 | val_acc {v}") for v in ("0.6685", "0.6769")]
    other = [f"some warning from worker code, value {v}" for v in (1, 2)]
    print(json.dumps({"stage": shown(*stage), "other": shown(*other)}))
""")


def test_two_trials_stage_lines_are_both_printed_at_once_while_other_lines_still_merge():
    import json

    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO})
    shown = json.loads(out.stdout.strip().splitlines()[-1])
    assert [line.rsplit(" ", 1)[1] for line in shown["stage"]] == ["0.6685", "0.6769"]
    # the dedup itself is on: another line that differs only in a number is held back
    assert shown["other"] == ["some warning from worker code, value 1"]
