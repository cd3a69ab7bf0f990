"""``unidiffuser-batch``: run, validate, submit, inspect and demo UniDiffuser dataset jobs.

unidiffuser-batch validate jobs/specs/synthetic-t2i.yaml
unidiffuser-batch run SPEC.yaml --set model.steps=25 --set output.uri=s3://bucket/out
unidiffuser-batch submit SPEC.yaml --address http://HEAD:8265
unidiffuser-batch inspect s3://bucket/out
unidiffuser-batch verify s3://bucket/out --trust-anchors root.pem
unidiffuser-batch regenerate s3://bucket/out KEY
unidiffuser-batch demo
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.spec import SpecError, load_spec
from unidiffuser.locations import redact

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"


class CommandError(Exception):
    """A problem the user can fix (bad spec, missing output, ...): printed, exit code 2, no traceback."""


def _load(args: argparse.Namespace) -> PipelineConfig:
    try:
        return load_spec(args.spec, args.set)
    except SpecError as exc:
        raise CommandError(str(exc)) from None


def _checked(args: argparse.Namespace, failure: str) -> PipelineConfig:
    """The spec, validated and pre-flighted; CommandError listing every problem otherwise."""
    config = _load(args)
    from jobs.validate import preflight

    problems = preflight(config)
    if problems:
        raise CommandError(f"{failure}:\n" + "\n".join(f"  - {p}" for p in problems))
    return config


def cmd_validate(args: argparse.Namespace) -> int:
    config = _checked(args, "spec is valid but not runnable")
    print(f"ok: {args.spec} ({config.model.mode.value}, {config.input.kind} -> {redact(config.output.uri)})")
    if args.plan:
        from jobs.local_ray import connect
        from pipelines.run import check_cluster_fits, plan_job

        connect(os.environ.get("RAY_ADDRESS"), log_to_driver=args.verbose)
        _fits(check_cluster_fits, config)
        _, plan = plan_job(config)
        print(f"plan: {plan.describe()}")
        for first, copies in plan.duplicates.groups().items():
            print(f"  exact duplicates of input {first}: {', '.join(copies)}")
    return 0


def _fits(check: Callable[[PipelineConfig], None], config: PipelineConfig) -> None:
    from pipelines.run import ClusterTooSmallError

    try:
        check(config)
    except ClusterTooSmallError as exc:
        raise CommandError(f"cannot run: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    config = _checked(args, "cannot run")
    from jobs.local_ray import connect
    from pipelines.run import check_cluster_fits, run_pipeline
    from pipelines.writers.summary import outcome_line

    connect(os.environ.get("RAY_ADDRESS"), log_to_driver=args.verbose, dashboard=args.dashboard)
    _fits(check_cluster_fits, config)
    report = run_pipeline(config, progress=args.progress)
    s, output = report.summary, redact(config.output.uri)
    if not report.did_model_work:
        print(f"nothing to do: all {report.units_total} units of {output} were already committed")
    print(
        f"{config.name}: {outcome_line(s)} in {s['run']['wall_time_s']:.1f}s ({report.units_run} units run, "
        f"{report.units_skipped} skipped) -> {output}"
    )
    return 0


@contextlib.contextmanager
def _jobs_api(address: str) -> Iterator[None]:
    """The Jobs API's failures (unreachable head, refused request, unknown job) as a CommandError."""
    try:
        yield
    except ConnectionError as exc:
        raise CommandError(f"cannot reach the Ray Jobs API at {address}: {exc}") from None
    except RuntimeError as exc:  # what the Jobs API client raises for a request the head refused
        raise CommandError(f"the Ray Jobs API at {address} refused the request: {exc}") from None


def cmd_submit(args: argparse.Namespace) -> int:
    from jobs import submit as jobs_api

    config = _load(args)
    with _jobs_api(args.address):
        job_id = jobs_api.submit(config, address=args.address)
    print(job_id)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from jobs import submit as jobs_api

    with _jobs_api(args.address):
        print(jobs_api.status(args.job_id, address=args.address))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from jobs import submit as jobs_api

    with _jobs_api(args.address):
        print(jobs_api.logs(args.job_id, address=args.address), end="")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from jobs import submit as jobs_api

    with _jobs_api(args.address):
        print("stopped" if jobs_api.stop(args.job_id, address=args.address) else "not running")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from jobs.inspect_output import inspect_output
    from unidiffuser.locations import describe_error

    try:
        report, _ = inspect_output(
            args.output, samples=args.samples, sheet_path=args.sheet, storage_options=_storage_options(args)
        )
    except FileNotFoundError as exc:
        raise CommandError(str(exc)) from None
    except Exception as exc:  # unreachable storage, refused credentials: one line naming the output
        raise CommandError(f"cannot read {redact(args.output)}: {describe_error(exc)}") from None
    print(report)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from pipelines.provenance.verify import MAX_PROBLEMS_SHOWN, VerifyTargetError, verify
    from unidiffuser.locations import describe_error

    options = _storage_options(args)
    anchors = _trust_anchors(args.trust_anchors, options) if args.trust_anchors else None
    try:
        report = verify(args.target, options, trust_anchors=anchors)
    except VerifyTargetError as exc:
        raise CommandError(f"verify: {exc}") from None
    except Exception as exc:  # unreachable storage, refused credentials: one line naming the target
        raise CommandError(f"verify: cannot read {redact(args.target)}: {describe_error(exc)}") from None
    if args.json:
        print(report.to_json())
        return 0 if report.ok else 1
    print(report.summary_line())
    problems = report.problems
    for problem in problems[:MAX_PROBLEMS_SHOWN]:
        print(f"  - {problem}")
    if len(problems) > MAX_PROBLEMS_SHOWN:
        print(f"  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems (--json lists them all)")
    for note in report.not_checked:
        print(f"  not checked: {note}")
    return 0 if report.ok else 1


def _trust_anchors(location: str, options: dict) -> bytes:
    """The PEM trust anchors at ``location`` (local or any fsspec URI); CommandError when unreadable."""
    from unidiffuser.locations import describe_error, open_location

    try:
        fs, path = open_location(location, options)
        data: bytes = fs.cat_file(path)
    except Exception as exc:
        raise CommandError(
            f"verify: cannot read the trust anchors {redact(location)}: {describe_error(exc)}"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CommandError(f"verify: the trust anchors {redact(location)} hold no PEM certificate")
    return data


def _add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """The spec's ``storage`` keys as options (``--endpoint-url``, ``--region``, ...), for commands that read
    an output without a spec."""
    from pipelines.config import StorageSpec

    for name, field in StorageSpec.model_fields.items():
        flag = f"--{name.replace('_', '-')}"
        if field.annotation is bool:
            parser.add_argument(flag, dest=f"storage_{name}", action="store_true", help=field.description)
        else:
            parser.add_argument(flag, dest=f"storage_{name}", help=field.description)


def _storage_options(args: argparse.Namespace) -> dict:
    from pipelines.config import StorageSpec

    values = {
        n: getattr(args, f"storage_{n}") for n in StorageSpec.model_fields if getattr(args, f"storage_{n}")
    }
    return StorageSpec(**values).storage_options()


def cmd_regenerate(args: argparse.Namespace) -> int:
    """Regenerate one record and compare: exit 0 when equal (bitwise, or within the GPU tolerance), 1 when not."""
    import json

    from pipelines.provenance.regenerate import CannotRegenerate, regenerate
    from pipelines.provenance.stored_record import RecordLookupError
    from unidiffuser.locations import describe_error

    try:
        result = regenerate(
            args.output,
            args.key,
            checkpoint=args.checkpoint,
            device=args.device,
            threads=args.threads,
            storage_options=_storage_options(args),
            input_uri=args.input,
        )
    except (CannotRegenerate, RecordLookupError) as exc:
        raise CommandError(f"regenerate {args.key}: {exc}") from None
    except Exception as exc:  # unreachable storage, refused credentials: one line naming the output
        raise CommandError(
            f"cannot regenerate {args.key} of {redact(args.output)}: {describe_error(exc)}"
        ) from None
    if args.save:
        data = result.image if result.image is not None else (result.regenerated_caption or "").encode()
        Path(args.save).write_bytes(data)
    print(json.dumps(result.to_dict(), sort_keys=True) if args.json else result.describe())
    return 0 if result.equal else 1


def _regenerate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "regenerate",
        help="regenerate one record from its row, marks and the job's summary, and compare it with the output",
    )
    p.add_argument("output", help="output folder or URI of a finished job")
    p.add_argument("key", help="the record's key")
    p.add_argument(
        "--checkpoint", help="the checkpoint folder or URI (default: the spec's); checked by identity"
    )
    p.add_argument(
        "--input",
        metavar="URI",
        help="a copy of the job's input corpus elsewhere, for records whose input image the output does not "
        "keep (i2t2i; checked only by the comparison)",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="bitwise on cpu, within a tolerance else"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads on CPU (default: the job's engine actors', floor(resources.cpus_per_actor))",
    )
    p.add_argument("--json", action="store_true", help="print the comparison as one JSON object")
    p.add_argument("--save", metavar="PATH", help="write the regenerated image (or caption) to PATH")
    _add_storage_arguments(p)
    p.set_defaults(func=cmd_regenerate)


def cmd_demo(args: argparse.Namespace) -> int:
    from jobs.demo import DemoModelMissing, run_demo

    try:
        return run_demo(Path(args.out), model=args.model, quiet=not args.progress)
    except DemoModelMissing as exc:
        raise CommandError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unidiffuser-batch", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show worker logs")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_spec(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("spec", help="job spec YAML")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a spec key (YAML value); relative paths given here are relative to the current "
            "folder, those inside the spec file to the spec's folder",
        )
        return p

    p = with_spec("run", "run a job on the local Ray or the one RAY_ADDRESS names (resumes committed units)")
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars (they show only at a terminal anyway)"
    )
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="start a local Ray with its dashboard (http://127.0.0.1:8265); off by default, as it adds "
        "seconds to the start and a busy process beside the job. A cluster's own dashboard is not affected",
    )
    p.set_defaults(func=cmd_run)
    p = with_spec("validate", "check a spec and that its inputs, checkpoint and output are reachable")
    p.add_argument(
        "--plan",
        action="store_true",
        help="also plan the input (counting records in Ray tasks) and say which units a run would keep, "
        "run and remove; writes nothing",
    )
    p.set_defaults(func=cmd_validate)
    p = with_spec("submit", "submit a job to a Ray cluster through the Jobs API")
    p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", DEFAULT_DASHBOARD))
    p.set_defaults(func=cmd_submit)
    for name, func, text in (
        ("status", cmd_status, "status of a submitted job"),
        ("logs", cmd_logs, "logs of a submitted job"),
        ("stop", cmd_stop, "stop a submitted job"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("job_id")
        p.add_argument("--address", default=os.environ.get("RAY_DASHBOARD_ADDRESS", DEFAULT_DASHBOARD))
        p.set_defaults(func=func)
    p = sub.add_parser("inspect", help="counts, score histogram, reasons and a contact sheet of an output")
    p.add_argument("output", help="output folder or URI of a finished job")
    p.add_argument("--samples", type=int, default=24)
    p.add_argument("--sheet", help="where to write the contact sheet PNG (default: OUTPUT/contact_sheet.png)")
    _add_storage_arguments(p)
    p.set_defaults(func=cmd_inspect)
    _regenerate_parser(sub)
    p = sub.add_parser(
        "verify",
        help="check the provenance marks of an image, a shard or a job output (exit 1 on any problem)",
        description="check that every generated image is marked as AI-generated, carries its own record and "
        "its own pixels, and the watermark / C2PA manifest its job asked for; input images carry no mark",
    )
    p.add_argument("target", metavar="PATH_OR_URI", help="an image, a parquet or tar shard, or a job output")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--trust-anchors", metavar="PEM", help="root certificates C2PA manifests must chain to")
    _add_storage_arguments(p)
    p.set_defaults(func=cmd_verify)
    p = sub.add_parser(
        "demo", help="run the embedded demo: the trained shapes model, shipped inputs, local Ray on CPU"
    )
    p.add_argument("--out", default="demo-output")
    p.add_argument(
        "--model",
        choices=("shapes", "tiny"),
        default="shapes",
        help="shapes: the committed trained checkpoint (default); tiny: random tiny models (plumbing only)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def configure_console(*, verbose: bool, quiet: bool) -> bool:
    """Logging for a person at a terminal (progress bars, then the summary) or for a log file (cron, CI: one
    line per committed unit, no per-tick progress); returns whether to show progress bars."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    interactive = sys.stderr.isatty()
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-dataset plans and timings
        logging.getLogger("ray.data._internal.progress").setLevel(
            logging.ERROR
        )  # "bars disabled": we chose so
        # the local Ray this CLI starts is this machine's own: its token-auth notice is not news
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        if not interactive and not quiet:
            logging.getLogger("pipelines.run").setLevel(logging.INFO)  # "unit 00003 committed: ..."
    return interactive and not quiet


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.progress = configure_console(verbose=args.verbose, quiet=getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except CommandError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
