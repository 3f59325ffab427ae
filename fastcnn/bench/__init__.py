"""``fastcnn bench``: how fast each kernel is on this machine, on every backend and
algorithm, against PyTorch and against the machine's measured ceilings.

Modules: ``cases`` (suites and tasks from the spec table), ``calls`` (the timed calls
on both sides), ``timing`` (first call, warm-up, repeats, statistics), ``ceilings``
(peak FLOP/s and bandwidth, the roofline), ``worker`` (one process per library),
``runner`` (the run and its JSON document), ``report`` / ``plot`` (output), ``cli``
(the options), ``schema`` (:data:`SCHEMA_VERSION`, the JSON Schema; ``schema.md``).

>>> from fastcnn.bench import SCHEMA_VERSION
>>> SCHEMA_VERSION >= 1
True
"""

from fastcnn.bench.schema import JSON_SCHEMA, SCHEMA_VERSION, validate

__all__ = ["JSON_SCHEMA", "SCHEMA_VERSION", "validate"]
