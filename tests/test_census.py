"""The path census: every fast path each backend declares runs in the spec suite.

A fast path taken only past a threshold (Winograd's tile count, the weight gradient's
position count, a chunk size) is a path no fixed small case reaches by chance. The spec
table holds cases on both sides of every threshold; this test runs the whole table
(every algorithm that takes each case, clean and with many NaN and inf planted, which
is what sends the weight gradients to their non-finite retries) and fails naming every
declared path that did not run, and every path that ran without being declared.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastcnn import _census
from fastcnn.backends import available_backends, has_op
from fastcnn.testing.harness import algorithm_cases, check_backward, check_forward
from fastcnn.testing.specs import SPECS

BACKENDS = [name for name in available_backends() if name != "reference"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_declared_path_runs_in_the_spec_suite(backend, rng):
    with _census.counting() as seen:
        for spec in SPECS:
            for direction, check in (("forward", check_forward), ("backward", check_backward)):
                op = spec.ops[0] if direction == "forward" else spec.ops[1]
                if op is None or not has_op(op, backend):
                    continue
                for case in spec.cases:
                    size = math.prod(case.shapes[spec.inputs[0]])
                    for variant in algorithm_cases(spec, case, backend, direction):
                        for specials in sorted({0, max(1, size // 8) if size else 0}):
                            check(spec, variant, backend, "float32", "contiguous", rng, specials)
                        # misaligned arrays: the paths without 16-byte loads
                        check(spec, variant, backend, "float32", "offset", rng)
    ran = {path for (name, path), count in seen.items() if name == backend and count}
    declared = _census.declared(backend)
    missing = sorted(declared - ran)
    assert not missing, f"declared paths of {backend} that no spec case ran: {missing}"


def test_census_counts_what_a_call_did():
    pytest.importorskip("numba")
    import fastcnn.functional as F

    x = np.ones((1, 8, 24, 44), np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    with _census.counting() as seen:
        F.conv2d(x, w, padding=1, algo="winograd", backend="numba")
    assert dict(seen) == {("numba", "winograd.forward.panels"): 1}
