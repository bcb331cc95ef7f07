"""Test setup for the engine: Triton kernels run under the interpreter when there is no GPU.

Triton reads TRITON_INTERPRET when a function is decorated with `@triton.jit` — its own `triton.language`
helpers when triton is imported, our kernels when a `workers.kernels` module is imported — so it must be set
before either. pytest loads this conftest during collection, before the test modules below it are imported; under
pytest-xdist each worker is a separate process and loads it too. Should another test package have imported triton
(through a kernel module) earlier in the same process, the Python modules of triton and of `workers.kernels` are
forgotten so that the next import decorates everything again, now for the interpreter (triton's compiled
extension stays loaded; it does not depend on the setting).

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
    stale = [n for n in sys.modules if n.startswith("workers.kernels.")
             or (n == "triton" or n.startswith("triton.")) and not n.startswith("triton._C")]
    for name in stale:
        del sys.modules[name]
