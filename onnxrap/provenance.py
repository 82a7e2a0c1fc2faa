"""What made a stored result: onnxrap's own source code.

Compiled graphs (compile.py) and the stored results that ``evaluate --resume`` and ``audit``
reuse depend on the rules as the code states them, not only on their names: a result made by
other code is stale.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from . import __version__


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """A hash of onnxrap's version and of every Python source file in the package."""
    h = hashlib.sha256(__version__.encode())
    root = Path(__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
