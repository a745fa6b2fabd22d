"""``run_sweep.py``: the command line. Every flag is documented in README.md."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from typing import NoReturn

from orchestrator.errors import MISSING, SpecError, SpecIssue, UserError
from orchestrator.store.secrets import REDACTED, is_secret_key, mask_uris_in_text
from trainables.core.durations import NEVER_DEDUP_REGEX
from trainables.core.paths import REPO_ROOT
from trainables.core.plugins import PluginError

# Before anything imports ray, which reads it then: trials' stage lines are never merged or held back
# (see trainables/core/durations.py). A value the user set wins.
os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", NEVER_DEDUP_REGEX)

DEFAULT_SPACE = os.path.join("search_spaces", "quickstart.yaml")


def resolve_space_path(path: str) -> str:
    """A relative path is looked up in the working directory first, then in the repository, so
    `run_sweep.py search_spaces/x.yaml` works from anywhere."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    in_repo = os.path.join(REPO_ROOT, path)
    return in_repo if os.path.exists(in_repo) else path


SUBCOMMANDS = ("report", "compare", "list")
LARGE_SWEEP_TRIALS = 1000  # more trials than this needs --yes: `num_samples: 1e9` is a typo, not a plan
EPILOG = """reports of stored sweeps (no training; rebuilt from --storage-path and MLflow):
  run_sweep.py report NAME [--storage-path P] [--mlflow-uri U]
      results table, plots, summary and best_config.yaml of sweep NAME, logged on its MLflow parent run
  run_sweep.py compare NAME NAME [...] [--storage-path P] [--mlflow-uri U]
      sweeps side by side: best configuration per method, top-1 mean ± std over seeds
  run_sweep.py list [--storage-path P]
      the sweeps under the storage path: state (finished, interrupted, running, ...), trials, best metric, date"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_sweep.py",
        description="Run a Ray Tune sweep of a distillation / weak-to-strong experiment, logged to MLflow.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("space", nargs="?", default=None,
                   help=f"search-space YAML file (default: {DEFAULT_SPACE})")
    p.add_argument("--address", default=None,
                   help="Ray cluster address ('auto' on a cluster node; default $RAY_ADDRESS if set, as in "
                        "`ray job submit`); otherwise start a local Ray")
    p.add_argument("--num-samples", type=int, default=None, help="override num_samples of the search space")
    _add_location_flags(p)
    p.add_argument("--name", default=None, help="sweep name (default: <space name>-<timestamp>)")
    p.add_argument("--resume", metavar="NAME", default=None,
                   help="resume the sweep NAME under --storage-path from its last state")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a search-space key, e.g. --set params.epochs=5 (repeatable; VALUE is YAML)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved spec and the trial resource plan, and list missing data or weights; run nothing")
    p.add_argument("--all", dest="all_rows", action="store_true",
                   help="print every row of the final results table (default: the top 10 by the metric; "
                        "every row is in results.csv either way)")
    p.add_argument("--yes", action="store_true",
                   help=f"run a sweep of more than {LARGE_SWEEP_TRIALS} trials (refused without it, as a likely typo)")
    return p


def _add_location_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow-uri", default=None,
                   help="MLflow tracking URI (default: with --address the cluster's server, from $W2S_MLFLOW_URI "
                        "or ~/.w2s/cluster.env; otherwise sqlite:///<cwd>/mlflow.db, made absolute)")
    p.add_argument("--storage-path", default=None,
                   help="where Tune/Train results, checkpoints and caches go: a path or s3://, gs:// URI "
                        "(default: with --address the cluster's bucket, from $W2S_STORAGE_PATH or "
                        "~/.w2s/cluster.env; otherwise <cwd>/ray_results)")


def build_report_parser(command: str) -> argparse.ArgumentParser:
    if command == "list":
        p = argparse.ArgumentParser(prog="run_sweep.py list",
                                    description="List the sweeps under --storage-path, newest first: state "
                                                "(finished, interrupted, running, failed, stalled), trials, best "
                                                "value of the search metric, last update.")
        p.add_argument("--storage-path", default=None,
                       help="where the sweeps ran: a path or s3://, gs:// URI (default: <cwd>/ray_results, "
                            "as for report)")
        return p
    if command == "report":
        p = argparse.ArgumentParser(prog="run_sweep.py report",
                                    description="Rebuild the report of a stored sweep (finished, interrupted or "
                                                "resumed): results table (Parquet, CSV, text), plots, seed-style "
                                                "summary and best_config.yaml, written to <storage-path>/NAME/ and "
                                                "logged on the sweep's MLflow parent run.")
        p.add_argument("name", metavar="NAME", help="the sweep's name (its folder under --storage-path)")
        p.add_argument("--loss-curves", action="store_true",
                       help="add the training loss panel to learning_curves.png (off by default: losses of "
                            "different temperatures or loss weights are not comparable)")
    else:
        p = argparse.ArgumentParser(prog="run_sweep.py compare",
                                    description="Compare stored sweeps side by side: the best configuration per "
                                                "method in each, top-1 mean ± std over seeds when seeds were swept; "
                                                "writes <storage-path>/comparisons/A__B/comparison.csv and .png.")
        p.add_argument("names", metavar="NAME", nargs="+", help="two or more sweep names")
    _add_location_flags(p)
    return p


def _storage(path: str | None) -> str:
    storage = path or os.path.join(os.getcwd(), "ray_results")
    return storage if "://" in storage else os.path.abspath(storage)


def _run_report(command: str, argv: list[str]) -> int:
    from orchestrator.store.tracking import normalise_tracking_uri

    args = build_report_parser(command).parse_args(argv)
    if command == "list":
        from orchestrator.run.listing import print_sweeps

        print_sweeps(_storage(args.storage_path))
        return 0
    uri = normalise_tracking_uri(args.mlflow_uri)
    if command == "report":
        from orchestrator.reports.publish import report_sweep

        report_sweep(args.name, _storage(args.storage_path), uri, loss_curves=args.loss_curves)
        return 0
    if len(args.names) < 2:
        raise UserError("compare needs at least two sweep names")
    twice = sorted({n for n in args.names if args.names.count(n) > 1})
    if twice:  # its rows would repeat side by side, which reads as agreement
        raise UserError(f"compare: sweep {', '.join(map(repr, twice))} is named twice; name each sweep once")
    from orchestrator.reports.compare import compare_sweeps

    compare_sweeps(args.names, _storage(args.storage_path), uri)
    return 0


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
    argv = sys.argv[1:] if argv is None else list(argv)
    # `report` and `compare` are subcommands; anything else is a search-space path as before.
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    args = None if command else build_parser().parse_args(argv)
    _quiet_logs()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from orchestrator.run.resume import term_as_interrupt

    restore_term = term_as_interrupt()
    try:
        from orchestrator.run.environment import check_environment

        check_environment()
        return _run_report(command, argv[1:]) if command else _run(args)
    except UserError as exc:
        print(f"error: {user_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except PluginError as exc:
        print(f"error: {mask_uris_in_text(str(exc))}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        # After the sweep started, run_sweep turns an interrupt into SweepInterrupted (with its name).
        print("interrupted before the sweep started; nothing ran: run the same command again", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last resort: one line, the traceback in a file
        print(f"error: {unexpected_error(exc)}", file=sys.stderr)
        return INTERNAL_ERROR
    finally:
        restore_term()


INTERNAL_ERROR = 4


def leave(status: int) -> NoReturn:
    """End the ``run_sweep.py`` process with ``status``, after :func:`main` returned it.

    The local Ray is shut down here rather than by Ray's ``atexit`` handler, so that a clean exit
    can remove its temp dir after it (:func:`orchestrator.run.local_ray.stop_local_ray`; kept for its
    logs on any other status). Then ``gc.freeze()``: the interpreter's teardown otherwise walks the
    whole heap of torch, Ray, MLflow and pyarrow objects with the garbage collector before exiting
    (seen with py-spy: ``gc_collect_main``, after Ray had stopped). Frozen objects are left to the
    process's end: the prompt comes back 1.7 s after a sweep's last line instead of 3.7 s on the
    2-core machine (``bench/driver_exit.py``). The exit itself stays the interpreter's own: threads
    joined, every ``atexit`` handler run, files flushed."""
    import gc

    from orchestrator.run.local_ray import stop_local_ray

    try:
        stop_local_ray(keep_dir=status != 0)
    except KeyboardInterrupt:  # a second Ctrl-C: Ray's own handler finishes the shutdown
        status = 130
    except Exception as exc:  # noqa: BLE001 - the sweep's outcome stands; Ray's own handler runs at exit
        print(f"warning: stopping the local Ray: {type(exc).__name__}: {exc}", file=sys.stderr)
    gc.freeze()
    sys.exit(status)


def user_message(exc: UserError) -> str:
    """The error's message, with URI passwords masked and the value of a credential-like key that
    a search-space problem names replaced by ``[redacted]``."""
    if isinstance(exc, SpecError):
        issues = []
        for i in exc.issues:
            secret = is_secret_key(i.key)
            origin = i.origin
            if secret and origin and "=" in origin:  # "--set KEY=VALUE" shows the value too
                origin = f"{origin.split('=', 1)[0]}={REDACTED}"
            issues.append(SpecIssue(i.key, i.message, REDACTED if i.value is not MISSING and secret else i.value,
                                    origin=origin))
        return mask_uris_in_text("\n".join(i.render(exc.file) for i in issues))
    return mask_uris_in_text(str(exc))


def unexpected_error(exc: BaseException) -> str:
    """One line for an error nobody anticipated, with the full traceback saved to a file."""
    import tempfile
    import time
    import traceback

    path = os.path.join(tempfile.gettempdir(), f"w2s-sweep-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    try:
        with open(path, "w") as f:
            f.write(mask_uris_in_text("".join(traceback.format_exception(exc))))
        where = f"full traceback in {path}"
    except OSError:
        where = "no traceback file could be written"
    first = (mask_uris_in_text(str(exc)).strip().splitlines() or [""])[0][:300]
    return (f"unexpected {type(exc).__name__}: {first} ({where}). If trials had started, the sweep's state is "
            "saved: resume it with --resume NAME; if it happens again, report it with that file")


def check_sweep_size(spec) -> None:
    """A sweep of more than LARGE_SWEEP_TRIALS trials runs only with --yes."""
    trials = spec.expected_trials()
    if trials <= LARGE_SWEEP_TRIALS:
        return
    grid = trials // spec.num_samples
    how = f"num_samples {spec.num_samples}" + (f" x grid {grid}" if grid > 1 else "")
    if spec.time_budget_s:
        bound = f"time_budget_s ({spec.time_budget_s:g} s) stops it before most of them run"
    else:
        bound = "with no time_budget_s it runs until every trial has ended"
    where = f"{spec.source_file}: " if spec.source_file else ""
    raise UserError(f"{where}num_samples: this sweep would run {trials:,} trials ({how}; {bound}). "
                    f"More than {LARGE_SWEEP_TRIALS:,} is usually a typo: lower num_samples (or --num-samples), "
                    "check it with --dry-run, or pass --yes to run it as it is")


def _run(args: argparse.Namespace) -> int:
    from orchestrator.run.cluster import resolve_locations
    from orchestrator.space.model import NAME_PATTERN
    from orchestrator.run.options import SweepOptions
    from orchestrator.run.driver_lock import sweep_lock

    if args.num_samples is not None and args.num_samples < 1:
        raise UserError(f"--num-samples must be at least 1 (got {args.num_samples})")
    for flag, name in (("--name", args.name), ("--resume", args.resume)):
        if name is not None and not re.fullmatch(NAME_PATTERN, name):
            raise UserError(f"{flag}: a sweep name is 1 to 81 letters, digits and _.- starting with a letter or digit "
                            f"(it names a folder under --storage-path) (got {name!r})")
    # Inside `ray job submit` Ray sets RAY_ADDRESS: the job runs on that cluster.
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    if address:
        from orchestrator.run.environment import address_problem

        problem = address_problem(address)
        if problem:
            raise UserError(f"{'--address' if args.address else '$RAY_ADDRESS'} {address!r}: {problem}")
    where = resolve_locations(args.mlflow_uri, args.storage_path, address)
    opts = SweepOptions(address=address, mlflow_uri=where.mlflow_uri, storage_path=where.storage_path,
                        name=args.resume or args.name, resume=bool(args.resume),
                        overrides=list(args.overrides), num_samples=args.num_samples, origins=where.origins,
                        all_rows=args.all_rows)
    if args.dry_run or not opts.name:
        return _run_spec(args, opts)
    with sweep_lock(opts, opts.name):  # before torch and Ray are even imported: a second driver is refused at once
        return _run_spec(args, opts)


def _run_spec(args: argparse.Namespace, opts) -> int:
    from orchestrator.space.parse import parse_spec, read_space_file
    from orchestrator.run.driver_lock import sweep_lock
    from orchestrator.run.sweep import default_name, dry_run, load_resume_spec

    if args.resume:
        if args.space:
            raise UserError("--resume NAME reads the search space saved with the sweep; do not also pass a file")
        spec, text = load_resume_spec(opts, args.resume)
    else:
        path = resolve_space_path(args.space or DEFAULT_SPACE)
        text = read_space_file(path)
        spec = parse_spec(text, path, args.overrides, args.num_samples)
    if args.dry_run:
        print(dry_run(spec, opts))
        return 0
    if not args.resume and not args.yes:
        check_sweep_size(spec)
    if opts.address:
        from orchestrator.run.cluster import probe_address

        probe_address(opts.address, "--address" if args.address else "$RAY_ADDRESS")
    if opts.name:  # locked by the caller
        return _run_locked(args, opts, spec, text)
    opts.name = default_name(spec)
    with sweep_lock(opts, opts.name):  # one driver per sweep, decided before anything is written
        return _run_locked(args, opts, spec, text)


def _run_locked(args: argparse.Namespace, opts, spec, text: str) -> int:
    from orchestrator.run.sweep import run_sweep

    if args.name and not args.resume:
        from orchestrator.run.resume import action_for_name

        action = action_for_name(opts.storage_path, args.name, spec)
        if action == "finished":
            print(f"sweep {args.name} already finished: its results are in {opts.storage_path}/{args.name}. Nothing to do; use "
                  f"another --name to run it again, or --resume {args.name} to rebuild its report")
            return 0
        if action == "resume":
            print(f"sweep {args.name} exists and did not finish: resuming it (another --name starts afresh)")
            opts.resume = True
    report = run_sweep(spec, text, opts)
    return 0 if report.best is not None else 1
