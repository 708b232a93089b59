"""Run ``reproduce`` on the tiny chain in this process (one of torchrun's), as ``verydeep
reproduce`` would: the same error handling and exit codes (``verydeep.cli.main``).

``python tests/reproduce/torchrun_reproduce.py DATA OUT TABLES [SIGTERM_RUN]``: with
SIGTERM_RUN, rank 0 sends SIGTERM to its launcher (torchrun, which forwards it to every rank,
as a scheduler's preemption does) after that run's first training step.
"""

import logging
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.reproduce.conftest import TINY  # noqa: E402
from verydeep.cli.main import expected_failure_code, one_line  # noqa: E402
from verydeep.reproduce import runner  # noqa: E402
from verydeep.reproduce.reproduction import Request, parse_tables, reproduce  # noqa: E402
from verydeep.train import loop  # noqa: E402


def preempt_after_first_step(run_name: str) -> None:
    real_train, real_step = runner.train, loop.train_step

    def train(cfg, run_dir, **kwargs):
        if Path(run_dir).name != run_name:
            return real_train(cfg, run_dir, **kwargs)

        def step(*args, **kw):
            out = real_step(*args, **kw)
            if int(os.environ.get("RANK", "0")) == 0 and not getattr(step, "sent", False):
                step.sent = True
                os.kill(os.getppid(), signal.SIGTERM)  # the launcher: torchrun's agent
                time.sleep(3)  # the agent forwards it to every rank meanwhile (this sleep ends early on it)
            return out

        loop.train_step = step
        try:
            return real_train(cfg, run_dir, **kwargs)
        finally:
            loop.train_step = real_step

    runner.train = train


def main() -> int:
    data, out, tables = Path(sys.argv[1]), Path(sys.argv[2]), parse_tables(sys.argv[3])
    if len(sys.argv) > 4:
        preempt_after_first_step(sys.argv[4])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        reproduce(Request(profile=TINY, data=data, out=out, tables=tables, device="cpu", progress=False))
    except Exception as e:  # noqa: BLE001 - as verydeep.cli.main sorts them
        code = expected_failure_code(e)
        if code is None:
            raise
        print(f"verydeep: {one_line(e)}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
