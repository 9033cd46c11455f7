"""Write the current error text of every golden case to tests/golden/expected/.

Run it only after a deliberate change to an error message, then review the diff:
``python -m tests.golden.generate``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tests.golden.cases import CASES
from tests.golden.harness import run_case

EXPECTED = Path(__file__).parent / "expected"

if __name__ == "__main__":
    for name, case in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            code, err = run_case(case, Path(tmp))
        (EXPECTED / f"{name}.txt").write_text(f"exit {code}\n{err}")
        print(f"{name}: exit {code}")
