"""What the command line costs around the work: start-up, the wait for the prompt after the
answer, and MLflow recording on a small model's build.

Side by side in one run:

- start-up: ``edgeship --help``, ``list`` and ``show`` (target: under 0.5 s each);
- the prompt: seconds from a build's last line to the process's exit, the ``edgeship``
  command (exit handlers, no native teardown) against the same build through a plain
  ``sys.exit(main())`` (the interpreter's full teardown) (target: under 1 s);
- recording: ``edgeship build`` of a small deployment with MLflow against ``--no-record``
  (target: under 10 % added).

    python bench/cli_overhead.py [--deployment posture_server] [--recipe ort_fp32] [--runs 3]

Artifacts and the MLflow store go to a scratch folder; the project is not changed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN_EXIT = "import sys; from orchestrator.cli.main import main; sys.exit(main())"


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds in all, seconds from the last output line to the exit, exit code)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    last = t0
    assert proc.stdout is not None
    for _ in proc.stdout:
        last = time.monotonic()
    code = proc.wait()
    end = time.monotonic()
    return end - t0, end - last, code


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deployment", default="posture_server")
    ap.add_argument("--recipe", default="ort_fp32")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    edgeship = str(Path(sys.executable).parent / "edgeship")
    scratch = Path(tempfile.mkdtemp(prefix="edgeship-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "EDGESHIP_"))}
    env |= {
        "EDGESHIP_ARTIFACTS": str(scratch / "artifacts"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
    }
    build = ["build", f"deployment={args.deployment}", f"recipe={args.recipe}"]

    print(f"edgeship CLI overhead, {os.cpu_count()} CPU(s), median of {args.runs} run(s)")
    print("\nstart-up (target < 0.5 s)")
    for words in (["--help"], ["list"], ["show", f"deployment={args.deployment}"]):
        walls = [timed([edgeship, *words], env)[0] for _ in range(args.runs)]
        ok = "ok" if median(walls) < 0.5 else "OVER"
        print(f"  edgeship {' '.join(words):<40} {median(walls):6.2f} s  {ok}")

    timed([edgeship, *build], env)  # the store's tables and the first registration, untimed
    recorded: list[float] = []
    unrecorded: list[float] = []
    tail_cli: list[float] = []
    tail_plain: list[float] = []
    for _ in range(args.runs):
        wall, tail, code = timed([edgeship, *build], env)
        assert code == 0, f"build failed ({code})"
        recorded.append(wall)
        tail_cli.append(tail)
        wall, _, code = timed([edgeship, *build, "--no-record"], env)
        assert code == 0, f"build failed ({code})"
        unrecorded.append(wall)
        _, tail, code = timed([sys.executable, "-c", PLAIN_EXIT, *build, "--no-record"], env)
        assert code == 0, f"build failed ({code})"
        tail_plain.append(tail)

    print("\nthe prompt after the answer (target < 1 s)")
    print(f"  edgeship (exit handlers, no native teardown)   {median(tail_cli):6.2f} s")
    print(f"  sys.exit(main()) (full interpreter teardown)   {median(tail_plain):6.2f} s")
    ratio = median(tail_plain) / max(median(tail_cli), 1e-3)
    print(f"  ratio                                          {ratio:6.1f}x")

    added = median(recorded) / median(unrecorded) - 1
    print(f"\nMLflow recording of {args.deployment} ({args.recipe}) (target < 10 % added)")
    print(f"  build --no-record   {median(unrecorded):6.2f} s")
    print(f"  build (recorded)    {median(recorded):6.2f} s")
    print(f"  added               {added:6.1%}  {'ok' if added < 0.10 else 'OVER'}")
    print(f"\nscratch: {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
