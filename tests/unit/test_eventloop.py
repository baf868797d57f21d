"""The event loop choice every distlab process makes (``distlab.common.eventloop``)."""

from __future__ import annotations

import asyncio

import pytest

from distlab.common import eventloop


async def _loop_class_name() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_the_default_where_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(eventloop.EVENT_LOOP_VARIABLE, raising=False)

    assert eventloop.chosen() == "uvloop"
    assert eventloop.run(_loop_class_name()).startswith("uvloop")


def test_the_environment_can_pick_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.EVENT_LOOP_VARIABLE, "asyncio")

    assert eventloop.chosen() == "asyncio"
    assert eventloop.run(_loop_class_name()).startswith("asyncio")


def test_an_unknown_loop_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.EVENT_LOOP_VARIABLE, "trio")

    with pytest.raises(ValueError, match="DISTLAB_EVENT_LOOP"):
        eventloop.chosen()
