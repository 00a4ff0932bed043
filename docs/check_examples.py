"""Run every example of the documentation: docs/examples/*.py and the README's
and docs/*.md's ```python blocks (each a whole program). Exits non-zero on the
first failure. Used by `nox -s docs`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def run(label: str, path: Path) -> None:
    print(f"--- {label}", flush=True)
    done = subprocess.run([sys.executable, str(path)], cwd=ROOT, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed with status {done.returncode}")


def main() -> None:
    count = 0
    for example in sorted((ROOT / "docs" / "examples").glob("*.py")):
        run(str(example.relative_to(ROOT)), example)
        count += 1
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for index, block in enumerate(BLOCK.findall(page.read_text()), start=1):
            with tempfile.TemporaryDirectory() as tmp:
                script = Path(tmp) / "example.py"
                script.write_text(block)
                run(f"{page.relative_to(ROOT)} block {index}", script)
            count += 1
    print(f"{count} examples ran")


if __name__ == "__main__":
    main()
