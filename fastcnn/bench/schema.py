"""The JSON document ``fastcnn bench --json FILE`` writes (schema in ``schema.md``).

:data:`JSON_SCHEMA` is a JSON Schema (draft 2020-12) of the document; :func:`validate`
checks a document against it (with ``jsonschema`` where installed, else the required
keys and the version). Bump :data:`SCHEMA_VERSION` on any change a reader would notice.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_BY_THREADS = {"type": "object", "additionalProperties": {"type": "number"}}

_STATISTICS = {
    "first_call_s": {"type": "number", "description": "the first call alone (JIT compile, load)"},
    "median_s": {"type": "number"},
    "q1_s": {"type": "number", "description": "25th percentile"},
    "q3_s": {"type": "number", "description": "75th percentile"},
    "min_s": {"type": "number"},
    "max_s": {"type": "number"},
    "runs": {"type": "integer", "minimum": 1},
    "times_s": {"type": "array", "items": {"type": "number"}},
}

_CEILINGS = {
    "type": ["object", "null"],
    "required": ["device", "dtype", "peak_flops", "bandwidth_bytes_per_s", "roofline"],
    "properties": {
        "device": {"enum": ["cpu", "gpu"]},
        "dtype": {"type": "string"},
        "threads": {"type": "integer"},
        "name": {"type": "string"},
        "peak_flops": {
            "type": "object",
            "description": "method (fma, gemm) -> thread count (or 'gpu') -> FLOP/s",
            "additionalProperties": _BY_THREADS,
        },
        "bandwidth_bytes_per_s": {
            "type": "object",
            "description": "method (copy) -> thread count -> bytes/s read + written",
            "additionalProperties": _BY_THREADS,
        },
        "roofline": {
            "type": "object",
            "required": ["peak_flops", "bandwidth_bytes_per_s"],
            "properties": {
                "peak_flops": {"type": "number"},
                "bandwidth_bytes_per_s": {"type": "number"},
            },
        },
        "errors": {"type": "array", "items": {"type": "string"}},
    },
}

_RESULT = {
    "type": "object",
    "required": [
        "key",
        "case_key",
        "op",
        "case",
        "direction",
        "dtype",
        "batch",
        "library",
        "backend",
        "algo",
        "variant",
        "flops",
        "bytes",
        "status",
    ],
    "properties": {
        "key": {"type": "string", "description": "case_key/variant: stable across runs"},
        "case_key": {"type": "string", "description": "op/case/direction/dtype/N<batch>"},
        "kind": {
            "enum": ["op", "model"],
            "description": "one spec-table op (absent: op), or a model's training step",
        },
        "op": {"type": "string", "description": "the spec, or the model (kind model)"},
        "case": {"type": "string"},
        "source": {"enum": ["bench", "sample"]},
        "tags": {"type": "array", "items": {"type": "string"}, "description": "its suites"},
        "shapes": {"type": "object"},
        "params": {"type": "object"},
        "direction": {
            "enum": ["fwd", "bwd", "train"],
            "description": "train: forward, loss, backward and optimizer update (kind model)",
        },
        "dtype": {"enum": ["float32", "float64"]},
        "batch": {"type": "integer"},
        "library": {"enum": ["fastcnn", "torch"]},
        "backend": {"type": "string"},
        "algo": {"type": ["string", "null"]},
        "variant": {"type": "string", "description": "backend or backend:algo"},
        "ran": {
            "type": "string",
            "description": "conv2d: the algorithm that ran (auto resolved), one per gradient "
            "for the backward joined by '+'",
        },
        "device": {"enum": ["cpu", "gpu"]},
        "flops": {"type": "number", "description": "floating-point operations of one call"},
        "bytes": {"type": "number", "description": "bytes one call must move (spec cost)"},
        "intensity": {"type": "number", "description": "flops / bytes"},
        "status": {"enum": ["ok", "error"]},
        "error": {"type": "string"},
        **_STATISTICS,
        "input_sets": {"type": "integer", "description": "input sets rotated between calls"},
        "outputs": {"enum": ["out=", "fresh"], "description": "preallocated or fresh outputs"},
        "clock": {"type": "string"},
        "bound": {"enum": ["compute", "memory"]},
        "ceiling_flops_per_s": {"type": "number", "description": "min(peak, intensity * bw)"},
        "flops_per_s": {"type": "number"},
        "bytes_per_s": {"type": "number"},
        "roofline_fraction": {"type": "number", "description": "achieved / ceiling"},
        "speedup_vs_peer": {
            **_NUMBER_OR_NULL,
            "description": "peer median / this median (> 1: fastcnn faster)",
        },
        "with_copies": {
            "type": "object",
            "description": "GPU only: timed with host-to-device and device-to-host copies",
            "properties": _STATISTICS,
        },
    },
}

JSON_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "fastcnn bench results",
    "type": "object",
    "required": [
        "schema_version",
        "created",
        "settings",
        "machine",
        "method",
        "ceilings",
        "results",
        "interrupted",
    ],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "created": {"type": "string", "description": "ISO 8601, UTC"},
        "command": {"type": "string"},
        "settings": {
            "type": "object",
            "required": ["suite", "dtype", "threads", "directions", "vs"],
            "properties": {
                "suite": {"type": "string"},
                "ops": {"type": ["array", "null"], "items": {"type": "string"}},
                "backends": {"type": "array", "items": {"type": "string"}},
                "algos": {"type": ["array", "null"], "items": {"type": "string"}},
                "dtype": {"type": "string"},
                "batch": {"type": ["integer", "null"]},
                "threads": {"type": "integer"},
                "directions": {"type": "array", "items": {"enum": ["fwd", "bwd"]}},
                "min_time": {"type": "number"},
                "min_runs": {"type": "integer"},
                "max_runs": {"type": "integer"},
                "vs": {"enum": ["torch", "none"]},
            },
        },
        "machine": {
            "type": "object",
            "required": ["cpu", "features", "cores", "python", "versions"],
            "properties": {
                "cpu": {"type": "string"},
                "features": {"type": "array", "items": {"type": "string"}},
                "cores": {"type": "integer"},
                "usable_cores": {"type": "integer"},
                "last_level_cache_bytes": {"type": "integer"},
                "platform": {"type": "string"},
                "python": {"type": "string"},
                "versions": {"type": "object", "additionalProperties": {"type": "string"}},
                "backends": {"type": "object"},
                "gpu": {"type": ["string", "null"]},
            },
        },
        "method": {
            "type": "object",
            "description": "how the numbers were taken: environment, threads per worker",
            "required": ["summary", "environment"],
            "properties": {
                "summary": {"type": "string"},
                "environment": {"type": "object", "additionalProperties": {"type": "string"}},
                "workers": {"type": "object"},
            },
        },
        "ceilings": {
            "type": "object",
            "required": ["cpu"],
            "properties": {"cpu": _CEILINGS, "gpu": _CEILINGS},
        },
        "results": {"type": "array", "items": _RESULT},
        "gpu_vs_cpu": {
            "type": ["array", "null"],
            "items": {
                "type": "object",
                "required": ["case_key", "cpu_variant", "gpu_speedup", "gpu_speedup_with_copies"],
                "properties": {
                    "case_key": {"type": "string"},
                    "cpu_variant": {"type": "string"},
                    "gpu_speedup": {"type": "number", "description": "CPU median / GPU median"},
                    "gpu_speedup_with_copies": {"type": "number"},
                    "crossover_batch": {
                        "type": ["integer", "null"],
                        "description": "smallest batch where the GPU with copies wins",
                    },
                },
            },
        },
        "notes": {"type": "array", "items": {"type": "string"}},
        "interrupted": {"type": "boolean", "description": "Ctrl-C: results are partial"},
    },
}


def validate(document: dict) -> None:
    """Raise ``ValueError`` when ``document`` does not follow :data:`JSON_SCHEMA`."""
    try:
        import jsonschema
    except ImportError:
        missing = [key for key in JSON_SCHEMA["required"] if key not in document]
        if missing:
            raise ValueError(f"bench document lacks {missing}") from None
        if document["schema_version"] != SCHEMA_VERSION:
            raise ValueError(
                f"bench document has schema version {document['schema_version']}, "
                f"expected {SCHEMA_VERSION}"
            ) from None
        return
    try:
        jsonschema.validate(document, JSON_SCHEMA)
    except jsonschema.ValidationError as error:
        path = "/".join(str(part) for part in error.absolute_path)
        raise ValueError(f"bench document is invalid at {path or '/'}: {error.message}") from error
