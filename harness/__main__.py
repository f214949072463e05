"""The command line: python -m harness {run, report, check, ls, validate, train} (also: eagle2-bench ...).

    python -m harness run mtbench --data-dir ../shared/data   # -> runs/mtbench/<UTC timestamp>/
    python -m harness report mtbench                          # latest run of mtbench -> runs/mtbench/<timestamp>/report/
    python -m harness check smoke --baseline my-baseline.json   # make it first with --write-baseline
    python -m harness ls
    python -m harness validate suites/tree-sweep.yaml
    python -m harness validate --explain                      # every suite key, method parameter and task option

Exit status: 0 done; 1 some generations failed (run) or a regression (check); 2 bad input (a bad
suite, argument, data file, baseline, or an output folder that is busy, read-only or full);
130 interrupted. Logging is configured here and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eagle2.schema import Field
    from harness.config import Suite

logger = logging.getLogger("harness")

EXIT_OK = 0
EXIT_FAILED = 1  # the run had failures / the check found regressions
EXIT_USAGE = 2  # bad input: a bad suite, argument, data file or baseline; an output folder in use, read-only or full
EXIT_INTERRUPTED = 130
EXIT_STATUS_HELP = (
    "exit status: 0 done, 1 some generations failed (run; see failures.jsonl) or a regression (check), "
    "2 bad input (suite, arguments, data, a malformed baseline, an output folder in use, read-only or full), 130 interrupted"
)


def _configure_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if verbosity < 1:
        for noisy in ("transformers", "urllib3", "filelock", "huggingface_hub", "matplotlib", "fontTools", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _temperatures(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas (e.g. 0,1), got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be finite numbers >= 0, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _shard(text: str) -> tuple[int, int]:
    from harness.config import parse_shard

    try:
        return parse_shard(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ----------------------------------------------------------------------------------------------
# Commands.


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from harness.config import apply_overrides, load_suite
    from harness.lock import RunLockedError
    from harness.results import FAILURES_FILE, OutputFolderError
    from harness.runner import RunExistsError, RunOptions, default_output_dir, latest_run_dir, run_suite
    from harness.tasks import DataSource

    suite = load_suite(args.suite)
    overrides = {
        key: value
        for key, value in {
            "limit": args.limit,
            "max_new_tokens": args.max_new_tokens,
            "temperatures": args.temperatures,
            "device": args.device,
            "threads": args.threads,
        }.items()
        if value is not None
    }
    suite = apply_overrides(suite, limit=args.limit, max_new_tokens=args.max_new_tokens, temperatures=args.temperatures, device=args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    backend = _backend(args, suite)
    if args.out:
        out = Path(args.out)
    elif args.resume:  # the latest run of this suite
        out = latest_run_dir(suite.name, shard=args.shard)
        print(f"resuming {out}", file=sys.stderr)
    else:
        out = default_output_dir(suite, args.shard)
    options = RunOptions(
        out_dir=out,
        data=DataSource.from_env(args.data_dir),
        resume=args.resume,
        shard=args.shard,
        execute_code=args.execute_code is not None,
        code_isolation=args.execute_code or "sandbox",
        progress=not args.no_progress,
        overrides=overrides,
        backend=backend,
    )
    if any(t.type == "humaneval" for t in suite.tasks) and not args.execute_code:
        logger.info("HumanEval pass@1 is off (`correct` = null); --execute-code runs the model's code to score it")
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # a killed run finalises its manifest too
    except ValueError:  # not the main thread
        previous = None
    try:
        summary = run_suite(suite, options)
    except (RunExistsError, RunLockedError, OutputFolderError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(
        f"{summary.status}: {summary.written} records written, {summary.skipped} already there, "
        f"{summary.failures} failures, {summary.cells} cells -> {summary.out_dir}"
    )
    if summary.failures:
        print(f"failures are listed in {summary.out_dir / FAILURES_FILE}", file=sys.stderr)
    return EXIT_FAILED if summary.failures else EXIT_OK


def resolve_run_dir(text: str) -> Path:
    """A run folder as given; else the latest run under runs/ of a suite (its name or its file)."""
    from harness.config import load_suite, resolve_suite_path
    from harness.runner import RUNS_ROOT, latest_run_dir

    path = Path(text)
    if path.is_dir():
        return path
    if (RUNS_ROOT / text).is_dir():
        return latest_run_dir(text)
    try:
        suite_file = resolve_suite_path(text)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{text!r} is neither a run folder nor a suite (name or file) with runs in {RUNS_ROOT}/; give a run folder "
            f"(e.g. {RUNS_ROOT}/<suite>/<timestamp> or results/<name>) or a suite name such as mtbench"
        ) from None
    return latest_run_dir(load_suite(suite_file).name)


def default_report_dir(run_dir: Path) -> Path:
    """Beside a run under runs/ (`<run>/report`, git-ignored); `reports/<name>` for curated runs elsewhere."""
    from harness.runner import RUNS_ROOT

    try:
        run_dir.resolve().relative_to(RUNS_ROOT.resolve())
    except ValueError:
        name = run_dir.parent.name if run_dir.name.startswith("shard-") else run_dir.name
        return Path("reports") / name
    return run_dir / "report"


def _backend(args: argparse.Namespace, suite: Suite) -> object | None:
    """The validated --backend options: None for the in-process default, else a harness.backends backend."""
    from harness import backends

    options = backends.options_from_args(args)
    backends.validate(options, suite)
    return backends.make_backend(options) if options.distributed else None


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import write_report

    runs = [resolve_run_dir(text) for text in args.runs]  # load_runs expands a folder of shards
    out = Path(args.out) if args.out else default_report_dir(runs[0])
    path = write_report(runs, out)
    print(f"report: {path}")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from harness.check import BaselineError, QuestionsDifferError, run_check, write_baseline

    run_dir = resolve_run_dir(args.run)
    if args.write_baseline:
        path = write_baseline(run_dir, Path(args.baseline), tau_rel_tol=args.tau_rel_tol, speedup_rel_tol=args.speedup_rel_tol)
        print(f"baseline written: {path}")
        return EXIT_OK
    try:
        ok, table = run_check(run_dir, Path(args.baseline), tau_rel_tol=args.tau_rel_tol, speedup_rel_tol=args.speedup_rel_tol,
                              allow_different_questions=args.allow_different_questions)
    except (BaselineError, QuestionsDifferError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print(table)
    if "differ from the baseline's" in table:
        print("warning: the run's questions differ from the baseline's (--allow-different-questions)", file=sys.stderr)
    if "**Warning (timing):**" in table:
        print("warning: some cells were timed while the machine was busy; see the table's warnings", file=sys.stderr)
    print("check passed" if ok else "check FAILED: see the table above", file=sys.stderr if not ok else sys.stdout)
    return EXIT_OK if ok else EXIT_FAILED


def cmd_ls(args: argparse.Namespace) -> int:
    from eagle2.methods import METHODS
    from harness.config import SuiteError, expand, list_suite_files, load_suite, suites_dir
    from harness.tasks import TASKS

    what = args.what
    if what in ("all", "tasks"):
        print("tasks (tasks[].type):")
        for spec in TASKS.values():
            print(f"  {spec.name:<11} {spec.description}")
            _print_fields(spec.options)
        print()
    if what in ("all", "methods"):
        print("methods (methods[].name, params):")
        for spec in METHODS.values():
            flags = (" (needs an EAGLE-3 head: eagle3_head)" if spec.head_kind == "eagle3" else " (needs a head)") if spec.needs_head else (" (transformers reference)" if spec.reference else "")
            print(f"  {spec.name:<17} {spec.description}{flags}")
            _print_fields(spec.params)
        print()
    if what in ("all", "suites"):
        print(f"suites ({suites_dir()}):")
        for file in list_suite_files():
            rel = file.relative_to(suites_dir())
            try:
                suite = load_suite(file)
                print(f"  {str(rel):<32} {len(expand(suite)):>4} cells  {suite.description}")
            except SuiteError as error:
                if error.only_missing_heads:
                    print(f"  {str(rel):<32}  needs heads trained first ({', '.join(error.missing_heads)}): "
                          "the commands are in its header")
                else:
                    print(f"  {str(rel):<32}  INVALID: {str(error).splitlines()[0]}")
            except FileNotFoundError as error:
                print(f"  {str(rel):<32}  INVALID: {str(error).splitlines()[0]}")
    return EXIT_OK


def _print_fields(fields: Mapping[str, Field]) -> None:
    from harness.explain import default_text, values_text

    for name, field in fields.items():
        print(f"      {name}: {default_text(field)} [{values_text(field)}]  {field.help}")


def cmd_validate(args: argparse.Namespace) -> int:
    from harness import backends
    from harness.config import expand, load_suite
    from harness.models import builtin_head_available

    if args.explain:
        from harness.explain import as_markdown, as_text, schema_tables

        print((as_markdown if args.markdown else as_text)(schema_tables()), end="")
    elif args.markdown:
        raise ValueError("--markdown goes with --explain (python -m harness validate --explain --markdown)")
    elif not args.suites:
        raise ValueError("give one or more suite files (or names in suites/), or --explain to print the schema")
    status = EXIT_OK
    for path in args.suites:
        suite = load_suite(path)
        cells = expand(suite)
        backends.validate(backends.options_from_args(args), suite)
        print(f"ok: {suite.path}: schema {suite.schema}, {len(suite.models)} model(s), {len(suite.tasks)} task(s), "
              f"{sum(len(m.grid()) for m in suite.methods)} method configuration(s), "
              f"{len(suite.sampling.temperatures)} temperature(s), {len(suite.seeds)} seed(s) -> {len(cells)} cells")
        for model in suite.models:
            if model.head and model.head.startswith("builtin:") and not builtin_head_available(model.head):
                fallback = f"falls back to {model.head_fallback!r}" if model.head_fallback else "its speculative cells will FAIL"
                print(f"  warning: model {model.name}: head {model.head} is not installed; {fallback}")
        if args.cells:
            for cell in cells:
                params = ",".join(f"{k}={v}" for k, v in cell.method_params.items())
                print(f"  {cell.cell_id}  {params}")
    return status


# ----------------------------------------------------------------------------------------------
# Parser.

DESCRIPTION = textwrap.dedent(
    """\
    eagle2-bench: reproducible benchmarks of speculative decoding (EAGLE-1 / EAGLE-2) against vanilla decoding.

    A suite (YAML, see suites/ and `ls`) crosses models x tasks x methods (x parameter sweeps) x
    temperatures x seeds into cells; `run` writes one JSON line per (cell, question, turn) to
    runs/<suite>/<UTC timestamp>/results.jsonl with a manifest.json, resumable with --resume; `report` turns runs
    into tables and figures; `check` compares a run with a committed baseline; `train` builds an
    EAGLE draft head for a model (prompts -> self-distillation -> training -> evaluation).
    """
)


def build_parser() -> argparse.ArgumentParser:
    from harness import backends
    from harness.check import DEFAULT_SPEEDUP_REL_TOL, DEFAULT_TAU_REL_TOL

    parser = argparse.ArgumentParser(prog="python -m harness", description=DESCRIPTION, epilog=EXIT_STATUS_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a suite",
        description="Run a suite: load each model once, warm up, time every (cell, question, turn), append to <out>/results.jsonl.",
        epilog=textwrap.dedent(
            """\
            examples:
              python -m harness run mtbench --data-dir ../shared/data       # -> runs/mtbench/<UTC timestamp>/
              python -m harness run suites/tree-sweep.yaml --limit 2 --max-new-tokens 64 --temperatures 0
              python -m harness run mtbench --data-dir ../shared/data --resume   # the same command + --resume: continues the latest run
              python -m harness run suites/paper/vicuna-7b-v1.3.yaml --shard 1/4   # on machine 1 of 4
              python -m harness run suites/paper/cluster-sweep.yaml --backend ray --ray-address auto
              python -m harness run suites/mtbench.yaml --gpus 0,1,2,3            # one worker per GPU
            one progress step = one answer (a question's turn, for one method configuration and repeat)
            """
        ) + EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("suite", help="suite file, or a name in suites/ (e.g. mtbench)")
    run.add_argument("--limit", type=_positive, metavar="N", help="questions per task (overrides every task's limit)")
    run.add_argument("--max-new-tokens", type=_positive, metavar="N", help="new tokens per answer (overrides every task's)")
    run.add_argument("--temperatures", type=_temperatures, metavar="T[,T...]", help="sampling temperatures, e.g. 0 or 0,1 (overrides the suite's)")
    run.add_argument("--out", metavar="DIR", help="output folder (default: a new runs/<suite name>/<UTC timestamp>[/shard-I-of-N]; "
                     "with --resume, the latest one); locked while the run writes")
    run.add_argument("--data-dir", metavar="DIR",
                     help="folder with mt_bench/question.jsonl, gsm8k/test.jsonl, ... (default: $EAGLE2_DATA_DIR; "
                          "else pinned upstream files are downloaded, sha256-checked and cached)")
    run.add_argument("--device", metavar="DEV", help="auto | cpu | cuda | cuda:N | mps for every model (overrides the suite's)")
    run.add_argument("--threads", type=_positive, metavar="N", help="torch CPU threads (default: torch's choice)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out (default: the suite's latest run) with the same options: finished (cell, question, "
                          "turn) records are kept and skipped; refused if the options, suite, question files, weights or head changed")
    run.add_argument("--shard", type=_shard, metavar="I/N", help="run only shard I of N (cells split round-robin); report merges shard folders")
    run.add_argument("--execute-code", nargs="?", const="sandbox", choices=("sandbox", "unsafe"), metavar="sandbox|unsafe",
                     help="score HumanEval pass@1 by executing the model's code (untrusted!): in a sandbox (own network, PID and "
                          "mount namespaces, read-only files, user nobody, resource limits; refused where unavailable), or with "
                          "=unsafe in a plain subprocess with resource limits only (write --execute-code=MODE, or put it after the suite)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    backends.add_arguments(run)
    run.set_defaults(func=cmd_run)

    report = commands.add_parser("report", help="tables and figures from run folders",
                                 description="Aggregate one or more runs (shards merge) into Markdown and LaTeX tables and figures.",
                                 epilog=EXIT_STATUS_HELP)
    report.add_argument("runs", nargs="+", metavar="RUN",
                        help="a run folder (a folder of shard-* folders counts as all of them), or a suite name or file: its latest run in runs/")
    report.add_argument("--out", metavar="DIR",
                        help="report folder (default: <run>/report for a run under runs/, else reports/<name of the run folder>)")
    report.set_defaults(func=cmd_report)

    check = commands.add_parser("check", help="compare a run with a baseline (exit 1 on regression)",
                                description="Compare tau, speedup and losslessness of a run with a committed baseline under tolerances.",
                                epilog=EXIT_STATUS_HELP + "; a baseline that is not valid JSON, has no groups or null values is bad input (2)")
    check.add_argument("run", metavar="RUN", help="a run folder, or a suite name or file: its latest run in runs/")
    check.add_argument("--baseline", required=True, metavar="FILE", help="baseline JSON (write one with --write-baseline)")
    check.add_argument("--tau-rel-tol", type=float, default=DEFAULT_TAU_REL_TOL, metavar="X",
                       help=f"allowed relative change of tau, either way (default {DEFAULT_TAU_REL_TOL})")
    check.add_argument("--speedup-rel-tol", type=float, default=DEFAULT_SPEEDUP_REL_TOL, metavar="X",
                       help=f"allowed relative drop of speedup (default {DEFAULT_SPEEDUP_REL_TOL})")
    check.add_argument("--write-baseline", action="store_true", help="write RUN's numbers to --baseline instead of checking")
    check.add_argument("--allow-different-questions", action="store_true",
                       help="compare even when the run's questions differ from the baseline's (with a warning); default: refused, exit 2")
    check.set_defaults(func=cmd_check)

    import harness.train

    train = commands.add_parser("train", help="train an EAGLE draft head: prompts, distill, train, evaluate",
                                description=harness.train.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.train.add_stages(train.add_subparsers(dest="stage", required=True, metavar="STAGE"))

    ls = commands.add_parser("ls", help="list tasks, methods and suites")
    ls.add_argument("what", nargs="?", default="all", choices=("all", "tasks", "methods", "suites"))
    ls.set_defaults(func=cmd_ls)

    validate = commands.add_parser("validate", help="check suite files and show their cells; --explain: the schema",
                                   description="Validate suite files; errors name the file, line, key path and allowed values. "
                                               "--explain prints every suite key, method parameter and task option.")
    validate.add_argument("suites", nargs="*", metavar="SUITE")
    validate.add_argument("--explain", action="store_true",
                          help="print the schema: suite keys, model keys, each method's parameters and each task's options "
                               "(type, default, allowed values or bounds, meaning)")
    validate.add_argument("--markdown", action="store_true", help="with --explain: as the README's Markdown tables")
    validate.add_argument("--cells", action="store_true", help="list every cell id")
    backends.add_arguments(validate)  # checked as `run` would check them
    validate.set_defaults(func=cmd_validate)
    return parser


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    from harness.config import SuiteError

    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(-1 if args.quiet else args.verbose)
    try:
        status = args.func(args)
        return EXIT_OK if status is None else status
    except SuiteError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, KeyError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        if args.verbose:
            logger.exception("details")
        return EXIT_USAGE
    except OSError as error:  # a read-only or full folder, a file in place of a folder: name the path
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished records are kept; continue with the same command and --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as error:
        print(f"error: {error} (is the report/check module installed?)", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
