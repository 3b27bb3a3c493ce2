"""Turning camera values (numpy scalars, tuples, arrays) into plain msgpack-friendly Python values."""

from __future__ import annotations

from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays and tuples to int/float/bool/str/list/dict."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bool, int, float, str, bytes)) or value is None:
        return value
    return str(value)
