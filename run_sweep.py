#!/usr/bin/env python
"""Run a w2s-sweep search space: `python run_sweep.py [SPACE.yaml] [flags]` (see README.md)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from orchestrator.cli import leave, main  # noqa: E402

if __name__ == "__main__":
    leave(main())
