"""The ``featuremaps`` command line: a thin shell over the library.

One module per command, and the parts they share:

- ``group.py``: the ``featuremaps`` group (``cli``, ``main``), listing the commands from a table so that
  ``--help`` and ``--version`` never import PyTorch;
- ``command.py``: the one error path (``Error: ...`` exit 1, usage errors 2, ``--debug`` tracebacks,
  Ctrl-C ``Aborted.`` 130) that every command gets by being a ``Command``;
- ``options.py``: the shared options as click decorators (``model_options``, ``layers_option``,
  ``out_option``) and the ``ModelOptions`` they gather, handed to commands by ``pass_model``;
- ``outputs.py``: the output-folder rules, the predictions writer and the progress bar;
- ``layers.py``, ``maps.py``, ``report.py``, ``cam.py``, ``atlas.py``, ``concepts.py``, ``synth.py``: the commands.
"""

from __future__ import annotations

from .command import cli_wording
from .group import cli, main

__all__ = ["cli", "cli_wording", "main"]
