"""Declarative, versioned mappings: validated as specs, compiled once, applied fast.

A ``MappingSpec`` is the YAML form (field rules with paths, value maps,
defaults and JSONata expressions); ``compile_mapping`` turns it into a
``CompiledMapping`` whose ``apply`` maps one payload at a time. Pure: no I/O.
"""

from charter.mapping.compile import (
    CompiledFields,
    CompiledMapping,
    compile_fields,
    compile_mapping,
)
from charter.mapping.paths import MISSING, get_path
from charter.mapping.spec import FieldRule, MappingEndpoint, MappingSpec

__all__ = [
    "MISSING",
    "CompiledFields",
    "CompiledMapping",
    "FieldRule",
    "MappingEndpoint",
    "MappingSpec",
    "compile_fields",
    "compile_mapping",
    "get_path",
]
