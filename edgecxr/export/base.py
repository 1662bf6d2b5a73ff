"""What a converter returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..bundle import IOSpec


@dataclass
class Converted:
    model_file: str
    files: list[str]
    input: IOSpec
    output: IOSpec
    converter: dict[str, str]
    details: dict[str, Any] = field(default_factory=dict)
