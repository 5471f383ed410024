"""``python -m asyncsess``: the demo trains, resumes, stops at its last step; usage."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import tensorflow as tf

import asyncsess
from asyncsess import _cli

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def demo(logdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the demo in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "asyncsess", "demo", "--logdir", str(logdir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=ENV,
    )


def checkpoint_step(logdir: Path) -> int:
    path = tf.train.latest_checkpoint(str(logdir))
    assert path is not None, f"no checkpoint in {logdir}"
    return int(path.rsplit("-", 1)[1])


class TestDemo:
    def test_trains_resumes_and_stops_at_the_last_step(self, tmp_path: Path) -> None:
        first = demo(tmp_path, "--steps", "20")
        assert first.returncode == 0, first.stderr
        assert "no checkpoint in" in first.stdout
        assert "Finished at global step 20." in first.stdout
        assert checkpoint_step(tmp_path) == 20
        assert list(tmp_path.glob("events.out.tfevents.*"))  # TensorBoard

        again = demo(tmp_path, "--steps", "30", "--backend", "trio")
        assert again.returncode == 0, again.stderr
        assert "resumed at global step 20 from" in again.stdout
        assert "Finished at global step 30." in again.stdout
        assert checkpoint_step(tmp_path) == 30

        done = demo(tmp_path, "--steps", "30", "--hooks-latency-ms", "1")
        assert done.returncode == 0, done.stderr
        assert "resumed at global step 30" in done.stdout
        assert "nothing to train" in done.stdout
        assert "Finished at global step 30." in done.stdout

    def test_progress_is_logged_when_not_a_terminal(self, tmp_path: Path) -> None:
        result = demo(tmp_path, "--steps", "5")
        assert result.returncode == 0, result.stderr
        assert "step 1/5 (20%) loss=" in result.stderr
        assert "step 5/5 (100%)" in result.stderr


class TestUsage:
    @pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["serve", "-h"]])
    def test_help(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            _cli.main(argv)
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: python -m asyncsess" in out
        assert "exit status:" in out

    def test_serve_help_documents_the_modes_and_limits(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit):
            _cli.main(["serve", "--help"])
        out = capsys.readouterr().out
        for option in (
            "MODULE:FACTORY",
            "--saved-model DIR",
            "--model-name NAME",
            "--max-batch-size N",
            "--batch-timeout-ms MS",
            "--no-batching",
            "--max-connections N",
            "--timeout-header S",
            "--timeout-body S",
            "--timeout-keep-alive S",
            "--access-log",
            "--save-checkpoint-secs S",
        ):
            assert option in out

    @pytest.mark.parametrize(
        ("host", "allowed"),
        [
            ("127.0.0.1", None),
            ("localhost", None),
            ("::1", None),
            ("127.0.0.2", ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2")),
            ("0.0.0.0", ("*",)),
            ("10.1.2.3", ("*",)),
        ],
    )
    def test_serve_answers_the_host_it_listens_on(
        self, host: str, allowed: tuple[str, ...] | None
    ) -> None:
        from asyncsess._serve import allowed_hosts_for

        assert allowed_hosts_for(host) == allowed

    def test_demo_help_documents_the_options(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit):
            _cli.main(["demo", "--help"])
        out = capsys.readouterr().out
        for option in (
            "--steps N",
            "--logdir DIR",
            "--hooks-latency-ms MS",
            "--backend",
        ):
            assert option in out

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            ([], "the following arguments are required: COMMAND"),
            (["train"], "invalid choice: 'train'"),
            (["demo", "--steps", "-3"], "argument --steps: must be >= 0, got -3"),
            (["demo", "--steps", "ten"], "expected a whole number, got 'ten'"),
            (["demo", "--hooks-latency-ms", "-1"], "must be a finite number >= 0"),
            (["demo", "--backend", "curio"], "invalid choice: 'curio'"),
            (["demo", "--logdir", ""], "--logdir must not be empty"),
            (["demo", "--bogus"], "unrecognized arguments: --bogus"),
            (["serve", "--port", "70000"], "must be between 1 and 65535"),
            (["serve", "--max-connections", "0"], "must be >= 1, got 0"),
            (["serve", "--timeout-header", "0"], "must be > 0"),
            (["serve", "--timeout-body", "-2"], "must be a finite number >= 0"),
            (["serve", "--max-batch-size", "0"], "must be >= 1, got 0"),
            (["serve", "mymodel"], "must look like MODULE:FACTORY"),
            (
                ["serve", "pkg.mod:build", "--saved-model", "/m"],
                "MODULE:FACTORY or --saved-model DIR, not both",
            ),
        ],
    )
    def test_bad_arguments_exit_2_with_a_message(
        self, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exit_info:
            _cli.main(argv)
        assert exit_info.value.code == _cli.EXIT_USAGE == 2
        err = capsys.readouterr().err
        assert message in err
        assert "usage:" in err

    def test_bad_argument_in_a_subprocess_exits_2(self, tmp_path: Path) -> None:
        result = demo(tmp_path, "--steps", "-1")
        assert result.returncode == 2
        assert "argument --steps: must be >= 0" in result.stderr

    def test_serve_without_its_extra_names_it(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # What a user without the `serve` extra sees: starlette cannot be imported.
        fake = types.ModuleType("asyncsess._serve")

        def main(args: object) -> int:
            raise ModuleNotFoundError("No module named 'starlette'", name="starlette")

        fake.main = main  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "asyncsess._serve", fake)
        monkeypatch.setattr(asyncsess, "_serve", fake, raising=False)
        monkeypatch.setattr(_cli, "_setup_logging", lambda verbose: None)
        assert _cli.main(["serve"]) == _cli.EXIT_ERROR
        assert "pip install 'asyncsess[serve]'" in capsys.readouterr().err

    def test_an_error_exits_1_naming_it(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def fail(args: object) -> int:
            raise OSError("disk full")

        monkeypatch.setattr(_cli, "_setup_logging", lambda verbose: None)
        monkeypatch.setattr(_cli, "_run_demo", fail)
        assert _cli.main(["demo"]) == _cli.EXIT_ERROR
        assert "asyncsess demo: error: OSError: disk full" in capsys.readouterr().err
