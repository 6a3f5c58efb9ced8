"""Write RUN_DIR/report.png from RUN_DIR/metrics.jsonl: `python scripts/plot_run.py RUN_DIR`.

The same figure the trainer writes at the end of a run; useful for a run still in progress or one
that was stopped before it finished.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from rlhf.metrics import plot_run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder containing metrics.jsonl")
    args = parser.parse_args()
    if not (args.run_dir / "metrics.jsonl").is_file():
        print(f"error: {args.run_dir / 'metrics.jsonl'} not found", file=sys.stderr)
        return 2
    print(plot_run(args.run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
