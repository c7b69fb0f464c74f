"""What a perturbation CAM will cost before it runs: :class:`CostEstimate`, and its budget check.

A perturbation method (Score-CAM, Ablation-CAM) runs one forward per channel and input row, minus the rows
it can prove unneeded. :meth:`~featuremaps.attribution.kinds.PerturbationCAM.estimate` counts those forwards
exactly from one captured forward and turns them into seconds with that forward's time;
``max_forwards=`` refuses a call whose count is over it before any perturbed forward runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._errors import AttributionError

__all__ = ["CostEstimate", "BudgetError", "check_budget"]


class BudgetError(AttributionError):
    """A perturbation CAM would run more forwards than ``max_forwards`` (raised before any of them)."""


@dataclass(frozen=True)
class CostEstimate:
    """The forwards a perturbation CAM runs for one call, and about how long they take.

    Attributes:
        method: the method's class name (``"ScoreCAM"``).
        forwards: perturbed rows the call runs (exact: what ``last_forwards`` reads after it).
        channels: channels of the explained layer(s), summed over layers.
        rows: input rows (images times classes).
        batch_size: rows per batched forward.
        seconds: ``forwards`` times the time per row of the unperturbed forward it was counted from
            (an estimate: batched rows usually run a little faster per row).

    Example:
        >>> e = CostEstimate("ScoreCAM", forwards=640, channels=128, rows=5, batch_size=32, seconds=41.0)
        >>> e.batches, str(e)
        (20, 'ScoreCAM: 640 forwards (128 channels x 5 inputs) in 20 batches of 32, about 41 s')
    """

    method: str
    forwards: int
    channels: int
    rows: int
    batch_size: int
    seconds: float

    @property
    def batches(self) -> int:
        """Batched forwards (``ceil(forwards / batch_size)``)."""
        return math.ceil(self.forwards / self.batch_size)

    def __str__(self) -> str:
        return f"{self.method}: {self.describe()}"

    def describe(self) -> str:
        """The counts and the time, without the method's name."""
        return (
            f"{self.forwards:,} forwards ({self.channels:,} channels x {self.rows} "
            f"input{'s' if self.rows != 1 else ''}) in {self.batches:,} batch{'es' if self.batches != 1 else ''} "
            f"of {self.batch_size}, about {format_seconds(self.seconds)}"
        )


def format_seconds(seconds: float) -> str:
    """A duration for people: ``"0.4 s"``, ``"41 s"``, ``"5 min 49 s"``.

    Example:
        >>> format_seconds(0.42), format_seconds(41.2), format_seconds(349)
        ('0.4 s', '41 s', '5 min 49 s')
    """
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def check_budget(estimate: CostEstimate, max_forwards: int | None) -> None:
    """Raise :class:`BudgetError` (one line naming the count and how to lower it) when over ``max_forwards``.

    Example:
        >>> e = CostEstimate("ScoreCAM", forwards=640, channels=128, rows=5, batch_size=32, seconds=41.0)
        >>> check_budget(e, None); check_budget(e, 640)
        >>> check_budget(e, 100)
        Traceback (most recent call last):
        ...
        featuremaps.attribution.cost.BudgetError: ScoreCAM needs 640 forwards (128 channels x 5 inputs, about 41 s), over max_forwards=100; explain fewer images or classes, choose a layer with fewer channels or a gradient method, or raise max_forwards
    """
    if max_forwards is None or estimate.forwards <= max_forwards:
        return
    raise BudgetError(
        f"{estimate.method} needs {estimate.forwards:,} forwards ({estimate.channels:,} channels x {estimate.rows} "
        f"input{'s' if estimate.rows != 1 else ''}, about {format_seconds(estimate.seconds)}), over "
        f"max_forwards={max_forwards:,}; explain fewer images or classes, choose a layer with fewer channels or a "
        "gradient method, or raise max_forwards"
    )
