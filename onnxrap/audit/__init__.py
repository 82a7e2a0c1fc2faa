"""``onnxrap audit``: a whole dataset explained into one self-contained HTML report.

command (the CLI's entry) -> runners (here, processes, Ray) -> worker (one
Explainer: inputs -> records, thumbnails) -> store (REPORT_DIR while running:
records.jsonl, thumbnails, class means, resumption) -> report (CSV/JSON,
faithfulness, index.html).
"""
from .command import run

__all__ = ["run"]
