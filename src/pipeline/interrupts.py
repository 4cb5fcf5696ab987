"""Stopping a stage cleanly when SLURM asks: SIGTERM (preemption, scancel) and SIGUSR1 (the time-limit warning
of `#SBATCH --signal=B:USR1@120`).

The handler only records the signal. The stage finishes the batch in flight, appends it durably, and then raises
`StageStopped` between batches, so nothing is half-written. After SIGUSR1 inside a SLURM job, the entry point
asks SLURM to requeue the job (`scontrol requeue`); the requeued task resumes where this one stopped. After
SIGTERM, SLURM itself requeues a preempted job whose partition requeues, and a cancelled one stays cancelled.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StageStopped(Exception):
    """A stage stopped between batches because of a signal; everything written so far is complete."""

    def __init__(self, signum: int, written: int, total: int):
        self.signum, self.written, self.total = signum, written, total
        super().__init__(f"stopped by {signal.Signals(signum).name} after the batch in flight: {written} of {total} "
                         "records are written; running the same command again resumes from there")


class GracefulStop:
    """Context manager: while active, SIGTERM/SIGUSR1 ask the stage to stop after its current batch."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            log.warning("received %s: finishing the batch in flight, then stopping", signal.Signals(signum).name)
        self.signum = signum

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def check(self, written: int, total: int) -> None:
        """Call between batches: stop here if a signal came."""
        if self.signum is not None and written < total:
            raise StageStopped(self.signum, written, total)


def requeue_this_job() -> str | None:
    """Ask SLURM to requeue the current job (or array task); returns what happened, or None outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"could not requeue SLURM job {job}: {e}"
    if out.returncode != 0:
        return f"could not requeue SLURM job {job}: {out.stderr.strip() or out.stdout.strip()}"
    return f"requeued SLURM job {job}; it resumes when it runs again"
