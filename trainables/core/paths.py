"""The repository root: relative paths in search spaces (shipped assets, checkpoints) are looked up
here after the working directory, and Ray workers get it on their PYTHONPATH."""
from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
