"""TensorFlow Serving's version policy: the newest serves, newer ones swap in live."""

from __future__ import annotations

import os
import shutil
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import numpy as np
import pytest

from asyncsess._model_versions import ModelVersions, fingerprint, versions_at
from asyncsess._signature import ServingError, VersionState
from tests import _models, _serving

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

pytestmark = pytest.mark.anyio


class FakeVersion:
    """A served version that answers its own number."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.signatures: dict[str, Any] = {}

    async def predict(self, signature_name: str, inputs: Any) -> dict[str, Any]:
        return {"version": np.array([self.version])}


class Opener:
    """``open_version`` for `ModelVersions`: fake versions, some broken."""

    def __init__(self, *broken: int) -> None:
        self.broken = set(broken)
        self.opened: list[int] = []
        self.closed: list[int] = []

    @asynccontextmanager
    async def __call__(self, path: str, number: int) -> AsyncIterator[FakeVersion]:
        self.opened.append(number)
        await anyio.lowlevel.checkpoint()
        if number in self.broken:
            raise OSError(f"version {number} is broken")
        try:
            yield FakeVersion(number)
        finally:
            self.closed.append(number)


def add_version(base: Path, number: int | str) -> Path:
    folder = base / str(number)
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    return folder


async def until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(30):
        while not predicate():  # noqa: ASYNC110 - state of background tasks
            await anyio.sleep(0.005)


def states(versions: ModelVersions) -> dict[int, VersionState]:
    return {s.version: s.state for s in versions.statuses()}


def current(versions: ModelVersions) -> int | None:
    served = versions.current
    return None if served is None else served.version


class TestLayout:
    def test_base_path(self, tmp_path: Path) -> None:
        add_version(tmp_path, 1)
        add_version(tmp_path, "0003")
        add_version(tmp_path, "latest")
        (tmp_path / "5").mkdir()  # still being written: no saved_model.pb yet
        (tmp_path / "7").write_text("a file")
        assert versions_at(str(tmp_path)) == {
            1: str(tmp_path / "1"),
            3: str(tmp_path / "0003"),
        }

    def test_saved_model_folder(self, tmp_path: Path) -> None:
        assert versions_at(str(add_version(tmp_path, 123))) == {
            123: str(tmp_path / "123")
        }
        assert versions_at(str(add_version(tmp_path, "model"))) == {
            1: str(tmp_path / "model")
        }

    def test_fingerprint_follows_the_files(self, tmp_path: Path) -> None:
        folder = add_version(tmp_path, 1)
        before = fingerprint(str(folder))
        (folder / "variables").mkdir()
        (folder / "variables" / "variables.index").write_bytes(b"12")
        assert fingerprint(str(folder)) != before


def versions(base: Path, opener: Opener, poll_secs: float = 0.005) -> ModelVersions:
    return ModelVersions(str(base), name="m", open_version=opener, poll_secs=poll_secs)


class TestVersions:
    async def test_the_highest_serves(self, tmp_path: Path) -> None:
        add_version(tmp_path, 1)
        add_version(tmp_path, 2)
        opener = Opener()
        async with versions(tmp_path, opener).running() as source:
            assert current(source) == 2
            assert [s.to_json() for s in source.statuses()] == [
                {
                    "version": "2",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
            async with source.use(None) as served:
                assert served.version == 2
            async with source.use(2) as served:
                assert served.version == 2
            with pytest.raises(ServingError, match=r"request: Specific\(m, 1\)") as e:
                async with source.use(1):
                    pass
            assert e.value.status == 404
        assert opener.opened == opener.closed == [2]

    async def test_a_newer_version_swaps_in(self, tmp_path: Path) -> None:
        add_version(tmp_path, 1)
        opener = Opener()
        async with versions(tmp_path, opener).running() as source:
            add_version(tmp_path, 2)
            await until(lambda: 1 in opener.closed)
            assert current(source) == 2
            assert states(source) == {2: VersionState.AVAILABLE, 1: VersionState.END}
            add_version(tmp_path, 0)  # older: not loaded
            polls = source.polls
            await until(lambda: source.polls > polls + 2)
            assert opener.opened == [1, 2]

    async def test_a_retired_version_finishes_its_requests(
        self, tmp_path: Path
    ) -> None:
        add_version(tmp_path, 1)
        opener = Opener()
        async with versions(tmp_path, opener).running() as source:
            async with source.use(None) as old:
                add_version(tmp_path, 2)
                await until(lambda: current(source) == 2)
                assert states(source)[1] is VersionState.UNLOADING
                with pytest.raises(ServingError):
                    async with source.use(1):
                        pass
                async with source.use(None) as new:
                    assert new.version == 2
                polls = source.polls
                await until(lambda: source.polls > polls + 2)
                assert opener.closed == []  # still holding version 1
                assert (await old.predict("", {}))["version"] == [1]
            await until(lambda: opener.closed == [1])
            assert states(source)[1] is VersionState.END

    async def test_a_broken_version_is_skipped_once(self, tmp_path: Path) -> None:
        add_version(tmp_path, 1)
        opener = Opener(2)
        async with versions(tmp_path, opener).running() as source:
            folder = add_version(tmp_path, 2)
            await until(lambda: states(source).get(2) is VersionState.END)
            (status,) = (s for s in source.statuses() if s.version == 2)
            assert status.error_code == "UNKNOWN"
            assert "version 2 is broken" in status.error_message
            assert current(source) == 1
            assert source.load_failures == 1
            polls = source.polls
            await until(lambda: source.polls > polls + 3)
            assert opener.opened == [1, 2]  # not retried every poll
            # Rewritten (fixed), it is tried again.
            opener.broken.clear()
            (folder / "saved_model.pb").write_bytes(b"fixed")
            await until(lambda: current(source) == 2)
            assert opener.closed == [1]

    async def test_a_deleted_version_gives_way_to_the_newest_left(
        self, tmp_path: Path
    ) -> None:
        # TF Serving's latest policy: the newest version present is aspired.
        add_version(tmp_path, 1)
        add_version(tmp_path, 2)
        opener = Opener()
        async with versions(tmp_path, opener).running() as source:
            async with source.use(None) as held:
                shutil.rmtree(tmp_path / "2")
                await until(lambda: current(source) == 1)
                # Version 1 served before version 2 retired: no gap for requests.
                assert states(source)[2] is VersionState.UNLOADING
                assert (await held.predict("", {}))["version"] == [2]
                async with source.use(None) as served:
                    assert served.version == 1
            await until(lambda: opener.closed == [2])
            assert states(source) == {2: VersionState.END, 1: VersionState.AVAILABLE}
            add_version(tmp_path, 2)  # back again: it serves again
            await until(lambda: current(source) == 2)
            assert opener.opened == [2, 1, 2]

    async def test_the_only_version_deleted_keeps_serving(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        add_version(tmp_path, 1)
        opener = Opener()
        async with versions(tmp_path, opener).running() as source:
            shutil.rmtree(tmp_path / "1")
            polls = source.polls
            await until(lambda: source.polls > polls + 3)
            assert current(source) == 1
            async with source.use(None) as served:
                assert served.version == 1
            gone = [r for r in caplog.records if "is gone" in r.getMessage()]
            assert len(gone) == 1  # logged once, not every poll
            assert gone[0].levelname == "WARNING"
            add_version(tmp_path, 3)
            await until(lambda: current(source) == 3)
        assert opener.opened == [1, 3]

    async def test_startup_skips_a_broken_newest(self, tmp_path: Path) -> None:
        add_version(tmp_path, 1)
        add_version(tmp_path, 2)
        async with versions(tmp_path, Opener(2)).running() as source:
            assert current(source) == 1
            assert states(source) == {2: VersionState.END, 1: VersionState.AVAILABLE}

    async def test_nothing_loads(self, tmp_path: Path) -> None:
        add_version(tmp_path, 1)
        with pytest.raises(RuntimeError, match=r"No version of model 'm'.*broken"):
            async with versions(tmp_path, Opener(1)).running():
                pass


async def wait_for_swap(client: Any, name: str) -> None:
    def swapped(document: dict[str, Any]) -> bool:
        found = {s["version"]: s["state"] for s in document["model_version_status"]}
        return found == {"2": "AVAILABLE", "1": "END"}

    with anyio.fail_after(60):
        while not swapped((await client.get(f"/v1/models/{name}")).json()):  # noqa: ASYNC110
            await anyio.sleep(0.02)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_swap_under_load_fails_no_request(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Clients predicting over HTTP while version 2 replaces version 1: all answered."""
    from asyncsess._model_server import create_model_app

    models = str(tmp_path_factory.getbasetemp() / "models")
    two = _models.built(models, "half_plus_two", _models.half_plus)
    three = _models.built(models, "half_plus_three", _models.half_plus, plus=3.0)
    base = tmp_path / "half"
    shutil.copytree(two, base / "1")
    app = create_model_app(str(base), poll_secs=0.02)
    answers: list[tuple[int, Any]] = []
    swapped = anyio.Event()

    async def client_loop(client: Any) -> None:
        after = 0
        while after < 5:
            response = await client.post(
                "/v1/models/half:predict", json={"instances": [1.0]}
            )
            answers.append((response.status_code, response.json()))
            after += swapped.is_set()

    async with _serving.over_http(app, timeout=60) as client:
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(client_loop, client)
            while len(answers) < 50:  # noqa: ASYNC110 - load is running
                await anyio.sleep(0.01)
            # Written aside, then moved in: the version appears whole.
            shutil.copytree(three, tmp_path / "incoming")
            os.rename(tmp_path / "incoming", base / "2")
            await wait_for_swap(client, "half")
            swapped.set()
        latest = await client.post("/v1/models/half:predict", json={"instances": [1.0]})
    failed = [a for a in answers if a[0] != 200]
    assert failed == []
    values = {a[1]["predictions"][0] for a in answers}
    assert values == {2.5, 3.5}  # each answer from one version or the other
    assert latest.json() == {"predictions": [3.5]}
