"""Test setup for the engine: Triton kernels run under the interpreter when there is no GPU.

Triton reads TRITON_INTERPRET when a kernel function is decorated, i.e. when a `workers.kernels` module is first
imported, so it must be set before that. pytest loads this conftest during collection, before the test modules
below it are imported; under pytest-xdist each worker is a separate process and loads it too. Should another test
package have imported a kernel module earlier in the same process, those modules are forgotten so that the next
import decorates their kernels again, now for the interpreter.

Tiny models run fastest on one CPU thread, and under `pytest -n 2` two workers already share the two cores:
more torch threads only contend (measured 10× slower on a loaded machine).
"""

from __future__ import annotations

import os
import sys

import torch

torch.set_num_threads(1)
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
    for name in [n for n in sys.modules if n.startswith("workers.kernels.")]:
        del sys.modules[name]
