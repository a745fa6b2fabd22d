"""``run_sweep.py``: the command line. Every flag is documented in README.md."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from orchestrator.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SPACE = os.path.join("search_spaces", "quickstart.yaml")


def resolve_space_path(path: str) -> str:
    """A relative path is looked up in the working directory first, then in the repository, so
    `run_sweep.py search_spaces/x.yaml` works from anywhere."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repo = os.path.join(REPO_ROOT, path)
    return in_repo if os.path.exists(in_repo) else path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_sweep.py",
        description="Run a Ray Tune sweep of a distillation / weak-to-strong experiment, logged to MLflow.",
    )
    p.add_argument("space", nargs="?", default=None,
                   help=f"search-space YAML file (default: {DEFAULT_SPACE})")
    p.add_argument("--address", default=None,
                   help="Ray cluster address ('auto' on a cluster node; default $RAY_ADDRESS if set, as in "
                        "`ray job submit`); otherwise start a local Ray")
    p.add_argument("--num-samples", type=int, default=None, help="override num_samples of the search space")
    p.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default: with --address the cluster's server, from $W2S_MLFLOW_URI "
                        "or ~/.w2s/cluster.env; otherwise sqlite:///<cwd>/mlflow.db, made absolute)")
    p.add_argument("--storage-path", default=None,
                   help="where Tune/Train results, checkpoints and caches go: a path or s3://, gs:// URI "
                        "(default: with --address the cluster's bucket, from $W2S_STORAGE_PATH or "
                        "~/.w2s/cluster.env; otherwise <cwd>/ray_results)")
    p.add_argument("--name", default=None, help="sweep name (default: <space name>-<timestamp>)")
    p.add_argument("--resume", metavar="NAME", default=None,
                   help="resume the sweep NAME under --storage-path from its last state")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a search-space key, e.g. --set params.epochs=5 (repeatable; VALUE is YAML)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved spec and the trial resource plan, run nothing")
    return p


def _quiet_logs() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    for name in ("ray", "ray.tune", "ray.train", "mlflow", "mlflow.store.db.utils", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    # With an http tracking server MLflow prints a "View run" link for every finished run; the
    # sweep prints its own summary and the UI address.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_logs()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; resume with --resume NAME", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    from orchestrator.cluster import resolve_locations
    from orchestrator.spec import load_spec
    from orchestrator.sweep import SweepOptions, dry_run, load_resume_spec, run_sweep

    if args.num_samples is not None and args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1 (got {args.num_samples})")
    # Inside `ray job submit` Ray sets RAY_ADDRESS: the job runs on that cluster.
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    where = resolve_locations(args.mlflow_uri, args.storage_path, address)
    opts = SweepOptions(address=address, mlflow_uri=where.mlflow_uri, storage_path=where.storage_path,
                        name=args.resume or args.name, resume=bool(args.resume),
                        overrides=list(args.overrides), num_samples=args.num_samples, origins=where.origins)
    if args.resume:
        if args.space:
            raise UserError("--resume NAME reads the search space saved with the sweep; do not also pass a file")
        spec, text = load_resume_spec(opts, args.resume)
    else:
        path = resolve_space_path(args.space or DEFAULT_SPACE)
        spec = load_spec(path, args.overrides, args.num_samples)
        with open(path) as f:
            text = f.read()
    if args.dry_run:
        print(dry_run(spec, opts))
        return 0
    report = run_sweep(spec, text, opts)
    return 0 if report.best is not None else 1
