"""Runs lm-evaluation-harness's own command line unchanged, and records how long its generation phase took.

Run by the peer's interpreter (never .venv's), from pipeline.benchpeers.lmeval:

    <peer venv>/bin/python lm_eval_timed.py TIMINGS.json run --model hf ... --tasks ...

Everything after TIMINGS.json is what `lm_eval` itself would be given. The only addition is a clock around the
HF backend's `generate_until` (all of a task's generation requests, batched as lm-eval batches them): its seconds
and request count are written to TIMINGS.json. Imports, task building, model loading and scoring stay outside it
and count only in the whole command's time, which the caller measures from outside.
"""

import json
import sys
import time
from pathlib import Path


def clock_generation(timings_path: Path) -> None:
    """Wrap HFLM.generate_until so that every call adds its seconds and request count to `timings_path`."""
    from lm_eval.models.huggingface import HFLM

    untimed = HFLM.generate_until
    totals = {"generate_s": 0.0, "requests": 0}

    def generate_until(self, requests, *args, **kwargs):
        started = time.perf_counter()
        replies = untimed(self, requests, *args, **kwargs)
        totals["generate_s"] += time.perf_counter() - started
        totals["requests"] += len(requests)
        timings_path.write_text(json.dumps(totals) + "\n")
        return replies

    HFLM.generate_until = generate_until


def main() -> None:
    timings_path = Path(sys.argv[1])
    clock_generation(timings_path)
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *sys.argv[2:]]
    cli_evaluate()


if __name__ == "__main__":
    main()
