"""The one progress protocol: ``progress(stage, done, total)`` (featuremaps._progress)."""

from __future__ import annotations

import pytest

from featuremaps._progress import reporter, silent


def test_a_callable_receives_every_update_unchanged() -> None:
    seen: list[tuple[str, int, int | None]] = []
    with reporter(lambda *args: seen.append(args)) as report:
        report("pass", 1, 4)
        report("pass", 4, 4)
        report("pages", 2, None)
    assert seen == [("pass", 1, 4), ("pass", 4, 4), ("pages", 2, None)]


@pytest.mark.parametrize("value", [False, None])
def test_false_and_none_are_silent(value: object, capsys: pytest.CaptureFixture[str]) -> None:
    with reporter(value) as report:  # type: ignore[arg-type]
        assert report is silent
        report("pass", 1, 2)
    assert capsys.readouterr() == ("", "")


def test_true_draws_nothing_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with reporter(True, unit="images") as report:  # pytest captures stderr: not a terminal
        report("pass", 3, 10)
    assert capsys.readouterr() == ("", "")


def test_anything_else_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"progress='yes': pass True, False or a callable"):
        with reporter("yes"):  # type: ignore[arg-type]
            pass


def test_a_watch_sees_every_update_and_keeps_the_bar_with_the_calls_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    from collections.abc import Iterator

    from featuremaps import _progress
    from featuremaps._progress import Watch

    drawn: list[tuple[object, ...]] = []

    @contextlib.contextmanager
    def bar(unit: str, min_total: int) -> Iterator[object]:  # stands in for the rich bar (no terminal here)
        yield lambda *update: drawn.append((unit, min_total, *update))

    monkeypatch.setattr(_progress, "_rich_bar", bar)
    seen: list[tuple[object, ...]] = []
    with reporter(Watch(lambda *update: seen.append(update)), unit="steps", min_total=2) as report:
        report("synthesis", 1, 8)
        report("synthesis", 8, 8)
    assert seen == [("synthesis", 1, 8), ("synthesis", 8, 8)]
    assert drawn == [("steps", 2, "synthesis", 1, 8), ("steps", 2, "synthesis", 8, 8)]
    seen.clear()
    drawn.clear()
    with reporter(Watch(lambda *update: seen.append(update), bar=False), unit="images") as report:
        report("atlas", 3, None)
    assert seen == [("atlas", 3, None)] and drawn == []
