"""Reports as JSON plus a Markdown twin beside it, each written whole or not at all (core.files)."""
import json
from pathlib import Path

from edge_runtime.core.files import write_atomic


def write_json_md(path: Path, data: dict, title: str, markdown: str) -> Path:
    """`path` (.json) and the same name with .md: the data, and `markdown` under a `title` heading."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, default=float) + "\n")
    write_atomic(path.with_suffix(".md"), f"# {title}\n\n{markdown}\n")
    return path
