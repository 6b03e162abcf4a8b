"""Writing a benchmark's table into docs/benchmarks.md, between its own markers."""

import re
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def publish(name: str, setup: str, rows: list[str], *, write: bool = True) -> None:
    """Print the table (a dated line saying what ran where, then `rows`) and, with `write`, put it between
    `<!-- name -->` and `<!-- /name -->` in docs/benchmarks.md (appended the first time)."""
    table = "\n".join([f"Measured {time.strftime('%Y-%m-%d')} on {setup}.", "", *rows])
    print("\n" + table)
    if not write:
        return
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    text = DOCS.read_text()
    block = f"{start}\n{table}\n{end}"
    text = re.sub(f"{re.escape(start)}.*?{re.escape(end)}", lambda _: block, text, flags=re.S) if start in text \
        else text + "\n" + block + "\n"
    DOCS.write_text(text)
