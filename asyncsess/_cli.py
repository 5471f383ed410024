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


SERVE_DESCRIPTION = """\
Serve over HTTP, in one of three modes:
  serve                        the demo model, training in the background
  serve MODULE:FACTORY         a graph your factory builds: served, and trained
                               if the factory gives a train op
  serve --saved-model DIR      a SavedModel over TensorFlow Serving's REST API
                               (DIR: the model, or a base path of numeric
                               versions; newer versions are swapped in live)
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
        help="an HTTP service: the demo, your own graph, or a SavedModel "
        "(needs asyncsess[serve])",
        description=SERVE_DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "target",
        nargs="?",
        default=None,
        metavar="MODULE:FACTORY",
        help="serve (and optionally train) the graph a factory of yours builds, "
        "named as uvicorn names apps (default: the demo model)",
    )
    serve.add_argument(
        "--saved-model",
        default=None,
        metavar="DIR",
        help="serve a SavedModel (or TensorFlow Serving's base path of numeric "
        "versions) over TensorFlow Serving's REST API",
    )
    serve.add_argument(
        "--model-name",
        default=None,
        metavar="NAME",
        help="the model's name in /v1/models/NAME (default: DIR's base name)",
    )
    serve.add_argument(
        "--max-batch-size",
        type=_positive_int,
        default=32,
        metavar="N",
        help="most rows one batched device step runs (default: %(default)s)",
    )
    serve.add_argument(
        "--batch-timeout-ms",
        type=_non_negative_float,
        default=1.0,
        metavar="MS",
        help="longest a request waits for others to batch with (default: "
        "%(default)s; less when the device is idle)",
    )
    serve.add_argument(
        "--no-batching",
        action="store_true",
        help="one device step per request",
    )
    serve.add_argument(
        "--save-checkpoint-secs",
        type=_positive_float,
        default=None,
        metavar="S",
        help="seconds between periodic checkpoints while training (default: 600 "
        "for the demo, the factory's own setting for MODULE:FACTORY)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log a line per request (uvicorn's access log; off: it costs the "
        "event loop more than a /status answer)",
    )
    limits = serve.add_argument_group(
        "connection limits",
        "Clients that connect and send nothing, or trickle a request in, are "
        "disconnected after these timeouts; past --max-connections a new "
        "connection is answered 503 with Retry-After.",
    )
    limits.add_argument(
        "--max-connections",
        type=_positive_int,
        default=_default_max_connections(),
        metavar="N",
        help="most open connections (default: %(default)s, under the open-file limit)",
    )
    limits.add_argument(
        "--timeout-header",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds a request head may take to arrive (default: %(default)s)",
    )
    limits.add_argument(
        "--timeout-body",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="seconds a request body may take after its head (default: %(default)s)",
    )
    limits.add_argument(
        "--timeout-keep-alive",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds an idle keep-alive connection stays open (default: %(default)s)",
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
    if getattr(args, "target", None) and getattr(args, "saved_model", None):
        parser.error(
            "serve takes MODULE:FACTORY or --saved-model DIR, not both; "
            f"received: target={args.target!r}, --saved-model={args.saved_model!r}"
        )
    if getattr(args, "target", None) and ":" not in args.target:
        parser.error(
            f"the target must look like MODULE:FACTORY (as uvicorn's app strings "
            f"do, e.g. mypkg.model:build); received: {args.target!r}"
        )
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


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0, got 0")
    return value


def _default_max_connections() -> int:
    """1000, or less where the open-file limit would not allow that many."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - Windows
        return 1000
    if soft == resource.RLIM_INFINITY:
        return 1000
    return max(16, min(1000, soft - 100))


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
