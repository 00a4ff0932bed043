"""Run every example of the documentation: docs/examples/*.py, the README's and
docs/*.md's ```python blocks (each a whole program, run in a fresh directory)
and the README's main job (`asyncexec run examples/sorting.py:experiment`).
Exits non-zero on the first failure. Used by `nox -s docs`.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def run(label: str, *argv: str) -> None:
    print(f"--- {label}", flush=True)
    with tempfile.TemporaryDirectory() as cwd:
        done = subprocess.run([sys.executable, *argv], cwd=cwd, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"{label} failed with status {done.returncode}")


def main() -> None:
    count = 0
    for example in sorted((ROOT / "docs" / "examples").glob("*.py")):
        run(str(example.relative_to(ROOT)), str(example))
        count += 1
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for index, block in enumerate(BLOCK.findall(page.read_text()), start=1):
            with tempfile.TemporaryDirectory() as tmp:
                script = Path(tmp) / "example.py"
                script.write_text(block)
                run(f"{page.relative_to(ROOT)} block {index}", str(script))
            count += 1
    main_job = str(ROOT / "examples" / "sorting.py") + ":experiment"
    run("the README's main job", "-m", "asyncexec", "run", main_job)
    count += 1
    print(f"{count} examples ran")


if __name__ == "__main__":
    main()
