"""ksym.workers.ForkedWorkers with real forked processes: a worker killed by a signal loses the task it
had, the run goes on with the others (the prefetch relies on it: what is not answered is answered later
in the process), and how each worker ended is kept (``ksym index build`` reports it)."""

from __future__ import annotations

import os
import signal

from ksym.workers import ForkedWorkers, WorkerExit


def _square_or_die(task: int) -> int:
    if task == 3:  # the out-of-memory killer, as seen by the worker
        os.kill(os.getpid(), signal.SIGKILL)
    return task * task


def test_a_killed_worker_loses_its_task_and_the_others_go_on() -> None:
    with ForkedWorkers(_square_or_die) as workers:
        got = sorted(workers.run(list(range(10)), 2))
        died = workers.died
        exits = workers.exits
    # task 3 is lost with its worker; the other worker takes every task after it
    assert got == [t * t for t in range(10) if t != 3]
    assert len(died) == 1 and died[0].exitcode == -signal.SIGKILL
    assert (died[0].signal, died[0].signal_name, str(died[0])) == (9, "SIGKILL", "killed by signal 9 (SIGKILL)")
    assert sorted(e.exitcode for e in exits) == [-signal.SIGKILL, 0]
    assert len({e.pid for e in exits}) == 2 and os.getpid() not in {e.pid for e in exits}
    for e in exits:  # reaped: no such child any more
        try:
            os.waitpid(e.pid, os.WNOHANG)
        except ChildProcessError:
            continue
        raise AssertionError(f"worker {e.pid} was not reaped")


def test_a_worker_exit_says_how_it_ended() -> None:
    assert str(WorkerExit(7, 0)) == "exited" and not WorkerExit(7, 0).died
    assert str(WorkerExit(7, 1)) == "exited with status 1" and WorkerExit(7, 1).signal is None
    assert str(WorkerExit(7, -15)) == "killed by signal 15 (SIGTERM)" and WorkerExit(7, -15).died
