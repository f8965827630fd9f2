"""Reports as JSON plus a Markdown twin beside it, each written to a temporary name and renamed."""
import json
import os
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_md(path: Path, data: dict, title: str, markdown: str) -> Path:
    """`path` (.json) and the same name with .md: the data, and `markdown` under a `title` heading."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, default=float) + "\n")
    write_atomic(path.with_suffix(".md"), f"# {title}\n\n{markdown}\n")
    return path
