"""torchrun, ending in one line and a meaningful exit code instead of a traceback.

``python -m verydeep.parallel.launch [torchrun's options] -m verydeep reproduce ...`` takes
torchrun's own arguments and runs its launcher in this process. When this process is
signalled (a scheduler's preemption) torchrun forwards the signal to the ranks, which
checkpoint and exit; torchrun itself then raises ``SignalException`` with a traceback and
exits 1. Here it ends with one line and 128 + the signal (SIGTERM: 143), the code each rank
exits with; a rank that failed ends it with that rank's exit code. Either way the code is
not 0, so a scheduler does not take the job for finished.
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SignalException as e:
        name = signal.Signals(e.sigval).name
        print(f"verydeep launch: stopped by {name}; the ranks checkpointed their run: run the same command "
              f"again to continue", file=sys.stderr)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        rank, failure = min(e.failures.items())
        print(f"verydeep launch: rank {rank} exited with {failure.exitcode} (its own message is above); "
              f"{len(e.failures)} rank(s) failed", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
