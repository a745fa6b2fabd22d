"""bench/common.record: each figure line names the code it was measured on."""
import json
import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import common  # noqa: E402


def test_a_record_names_the_commit_and_whether_the_tree_differed(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", str(tmp_path))
    common.record("unit", torch.device("cpu"), {"steps": 3}, {"a_per_s": 2.0}, {"a_over_b": 1.5})
    (line,) = (tmp_path / "unit.jsonl").read_text().splitlines()
    row = json.loads(line)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert re.fullmatch(re.escape(head) + r"(\+changes)?", row["code"])
    assert (row["figures"], row["ratios"], row["args"]) == ({"a_per_s": 2.0}, {"a_over_b": 1.5}, {"steps": 3})


def test_outside_a_checkout_the_code_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "ROOT", str(tmp_path))  # no .git here (nor above /tmp)
    assert common.code_version() == "unknown"


def test_a_record_keeps_the_gpu_settings_set_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    common.record("unit", torch.device("cpu"), {}, {"a_per_s": 1.0}, {})
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "32")
    common.record("unit", torch.device("cpu"), {}, {"a_per_s": 1.0}, {})
    plain, queues = (json.loads(line) for line in (tmp_path / "unit.jsonl").read_text().splitlines())
    assert "env" not in plain and queues["env"] == {"CUDA_DEVICE_MAX_CONNECTIONS": "32"}
