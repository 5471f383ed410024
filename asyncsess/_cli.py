"""``python -m asyncsess``: argument parsing, logging set-up and exit codes."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger("asyncsess")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

EXIT_CODES = """\
exit status:
  0    finished, or stopped gracefully by SIGINT/SIGTERM (final checkpoint written)
  1    error
  2    bad command line
  130  Ctrl-C before training started
A second SIGINT/SIGTERM while stopping kills the process at once, without a
final checkpoint (a shell reports 130 or 143).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (``sys.argv[1:]`` by default); the status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    _setup_logging(args.verbose)
    try:
        status: int = args.handler(args)
    except KeyboardInterrupt:
        sys.stderr.write("asyncsess: interrupted\n")
        return EXIT_INTERRUPTED
    except Exception as exc:
        if args.verbose:
            logger.exception("asyncsess %s failed", args.command)
        sys.stderr.write(
            f"asyncsess {args.command}: error: {type(exc).__name__}: {exc}\n"
            "(run with -v for the traceback)\n"
        )
        return EXIT_ERROR
    return status


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``python -m asyncsess`` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m asyncsess",
        description="asyncsess: an async MonitoredSession for TensorFlow.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_serve(sub)
    return parser


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging and tracebacks"
    )


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="train a small model on synthetic data, with checkpoints",
        description=(
            "Train a linear regression on synthetic data under a MonitoredSession "
            "with async and TensorFlow hooks. Checkpoints and TensorBoard events "
            "go to --logdir; a second run resumes from the last checkpoint. "
            "SIGINT/SIGTERM stop after the current step with a final checkpoint."
        ),
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--steps",
        type=_non_negative_int,
        default=2000,
        metavar="N",
        help="the last global step, as StopAtStepHook(last_step=N): a run resumed "
        "at or past N exits at once (default: %(default)s)",
    )
    demo.add_argument(
        "--logdir",
        default="runs/demo",
        metavar="DIR",
        help="checkpoints and TensorBoard event files (default: %(default)s)",
    )
    demo.add_argument(
        "--hooks-latency-ms",
        type=_non_negative_float,
        default=0.0,
        metavar="MS",
        help="add an async hook awaiting MS milliseconds after each step, "
        "overlapping the next step (default: %(default)s)",
    )
    demo.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop (default: %(default)s)",
    )
    _common(demo)
    demo.set_defaults(handler=_run_demo)


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="an HTTP service training in the background (needs asyncsess[serve])",
        description="Serve the demo model over HTTP while it trains.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="(default: %(default)s)")
    serve.add_argument(
        "--port", type=_port, default=8000, help="(default: %(default)s)"
    )
    serve.add_argument(
        "--logdir", default="runs/serve", metavar="DIR", help="(default: %(default)s)"
    )
    serve.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' on POST requests "
        "(default: $ASYNCSESS_TOKEN)",
    )
    _common(serve)
    serve.set_defaults(handler=_run_serve)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks argparse cannot express; failures exit with status 2."""
    if getattr(args, "backend", None) == "trio" and not _installed("trio"):
        parser.error(
            "--backend trio needs the trio package; "
            "install it with: pip install 'asyncsess[trio]'"
        )
    if getattr(args, "logdir", "x") == "":
        parser.error("--logdir must not be empty")


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import DemoOptions, run_demo

    options = DemoOptions(
        steps=args.steps,
        logdir=args.logdir,
        hooks_latency_ms=args.hooks_latency_ms,
        backend=args.backend,
    )
    return run_demo(options, sys.stdout)


def _run_serve(args: argparse.Namespace) -> int:
    # The web service needs the `serve` extra (starlette, uvicorn): import it only
    # here. Its contract: main(args: argparse.Namespace) -> int (the exit status).
    try:
        from . import _serve  # type: ignore[attr-defined, unused-ignore]

        status: int = _serve.main(args)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.startswith("asyncsess"):
            raise
        sys.stderr.write(
            f"asyncsess serve: {exc.name!r} is not installed; the web service "
            "needs the serve extra: pip install 'asyncsess[serve]'\n"
        )
        return EXIT_ERROR
    return status


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the current ``sys.stderr``, which a live progress bar redirects."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(verbose: bool) -> None:
    handler = _StderrHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    if not verbose:
        # The progress lines, warnings and errors; not each hook's INFO chatter
        # ("Saving checkpoints for ...") nor TF's own deprecation notices.
        logging.getLogger("asyncsess.hooks").setLevel(logging.WARNING)
        logging.getLogger("asyncsess.hooks.progress").setLevel(logging.INFO)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535, got {value}")
    return value


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False
