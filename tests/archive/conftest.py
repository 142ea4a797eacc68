"""Fixtures of the archive tests (helpers in archive_support.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.archive.archive_support import plant_identity
from tests.archive.hub_stub import HubState, running_hub
from tests.support.recorded_study import build, template_result


@pytest.fixture(scope="session")
def recorded_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished multi-backend GPU study (6 configurations x 3 cycles, one failed run), identity planted."""
    d = build(tmp_path_factory.mktemp("recorded"), template_result())
    plant_identity(d)
    return d


@pytest.fixture
def study_copy(recorded_study: Path, tmp_path: Path) -> Path:
    """A copy of the recorded study a test may change."""
    dest = tmp_path / "studies" / recorded_study.name
    shutil.copytree(recorded_study, dest)
    return dest



@pytest.fixture
def hub() -> Iterator[HubState]:
    """The local Hub stub (tests/archive/hub_stub.py), empty, for one test."""
    with running_hub() as state:
        yield state
