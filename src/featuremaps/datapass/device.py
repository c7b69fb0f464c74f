"""Which path a dataset pass (the atlas, its statistics) takes on a device: the CPU's, or an accelerator's.

On the CPU a host-side check costs nothing and every pass over a map costs
memory bandwidth, so the CPU path filters early (only maps that may enter a
top-k are located) and checks as it goes. On an accelerator a pass is cheap
and a host-side check makes the host wait for the device's queue, so that
path does whole-batch work with no checks until results are read.
"""

from __future__ import annotations

import torch

_FORCE: bool | None = None  # tests set True to run the accelerator path on the CPU


def asynchronous(device: torch.device) -> bool:
    """Whether ``device`` takes the accelerator path (work queued; host checks would wait for it).

    Example:
        >>> import torch
        >>> asynchronous(torch.device("cpu")), asynchronous(torch.device("meta"))
        (False, True)
    """
    if _FORCE is not None:
        return _FORCE
    return device.type != "cpu"
