"""A dataset pass under ``torch.distributed``: ranks, gathers, and check-ins with a timeout that names the missing rank.

Used by the atlas and by concept discovery. Before each collective step (the
merge at the end of the pass, the gathering of synthesized images) every rank reports in through the process
group's key-value store and waits, at most ``timeout`` seconds, for the
others. A rank that does not come (stuck, dead, or much slower) makes the
others fail with an error naming it, instead of waiting for the backend's
own timeout (30 minutes for gloo) or forever.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from typing import Any

import torch
import torch.distributed as dist

from ..errors import FeatureMapsError

__all__ = [
    "DEFAULT_TIMEOUT", "DistributedTimeoutError", "all_gather", "check_in", "check_timeout", "comm_device",
    "gather_json", "rank_world",
]

DEFAULT_TIMEOUT = 600.0
"""Seconds a rank waits for the others at a check-in (10 minutes)."""

_rounds = itertools.count()  # check-ins made by this process: every rank makes them in the same order


class DistributedTimeoutError(FeatureMapsError, TimeoutError):
    """A rank did not report in within the timeout."""


def check_timeout(timeout: Any) -> float:
    """``timeout`` as a positive number of seconds, or a clear error.

    Example:
        >>> check_timeout(30)
        30.0
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
        raise FeatureMapsError(
            f"timeout={timeout!r} must be a positive number of seconds: how long a process waits for the others"
        )
    return float(timeout)


def rank_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside ``torch.distributed``.

    Example:
        >>> rank_world()
        (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store to use: the collectives' own timeout applies
        return None


def check_in(what: str, timeout: float) -> None:
    """Report this rank in and wait up to ``timeout`` seconds for every other rank to do the same.

    Raises:
        DistributedTimeoutError: naming the ranks that did not report in.
    """
    rank, world = rank_world()
    if world <= 1:
        return
    store = _store()
    if store is None:
        return
    n = next(_rounds)
    keys = [f"featuremaps/check-in/{n}/{r}" for r in range(world)]
    store.set(keys[rank], "1")
    # poll (store.check does not block) rather than store.wait, whose timeout logs socket errors
    deadline, pause = time.monotonic() + timeout, 0.01
    while not store.check(keys):
        if time.monotonic() >= deadline:
            break
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(2 * pause, 0.5)
    missing = [r for r, key in enumerate(keys) if not store.check([key])]
    if not missing:
        return
    names = ", ".join(str(r) for r in missing)
    raise DistributedTimeoutError(
        f"rank{'s' if len(missing) > 1 else ''} {names} of {world} did not reach {what} within {timeout:g} s "
        f"(waiting on rank {rank}): it is stuck, dead or much slower; see its output, or raise the timeout "
        "(timeout= / --timeout) if it is only slow"
    )


def comm_device(state_device: torch.device) -> torch.device:
    """Where the gathers' tensors go: the GPU for NCCL (the state's own when it is on one), else the CPU."""

    if dist.get_backend() == "nccl":
        return state_device if state_device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather(t: torch.Tensor, device: torch.device, world: int) -> list[torch.Tensor]:
    """Every rank's ``t`` (same shape and dtype on every rank), in rank order."""

    src = t.to(device).contiguous()
    out = [torch.empty_like(src) for _ in range(world)]
    dist.all_gather(out, src)
    return out


def gather_json(obj: Any, device: torch.device, world: int) -> list[Any]:
    """Every rank's JSON-safe ``obj``, in rank order (sizes may differ between ranks)."""
    data = torch.tensor(list(json.dumps(obj, sort_keys=True).encode("utf-8")), dtype=torch.uint8)
    sizes = all_gather(torch.tensor([data.numel()], dtype=torch.int64), device, world)
    longest = max(int(s.item()) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8)
    padded[: data.numel()] = data
    chunks = all_gather(padded, device, world)
    return [json.loads(c[: int(s.item())].cpu().numpy().tobytes().decode("utf-8")) for c, s in zip(chunks, sizes)]
