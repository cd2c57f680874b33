"""Forked worker processes that take tasks from a shared counter: :class:`ForkedWorkers`.

Used by the prefetch of many cold units (:mod:`ksym.prefetch`) and by ``ksym index build``
(:mod:`ksym.portable_build`). The workers are made with the ``fork`` start method, so the work
function and the task list are inherited, not pickled, and no module-level state is involved. Each
worker takes ``take`` tasks at a time from a counter shared with the others (so that tasks of very
different cost spread over the workers), sends each result back through its own pipe, runs with the
garbage collector off and leaves by ``os._exit`` (it writes nothing of its parent's, such as buffered
output). An exception in a worker is sent to the parent and raised there. While the workers run, the
parent freezes the collector's view of its objects (they share them copy-on-write). Every worker is
reaped before :meth:`ForkedWorkers.run` ends, also when its caller stops reading or raises (and if the
parent is killed, each worker ends at its next result: it holds no reading end of any pipe); how each
one ended is kept (:attr:`ForkedWorkers.exits`, a :class:`WorkerExit` each), so that a caller can tell a
worker killed by a signal (the out-of-memory killer, a user) from one that finished.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .records import NamedTuple

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = ["ForkedWorkers", "WorkerExit", "usable_cpus"]

T = TypeVar("T")
R = TypeVar("R")


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class WorkerExit(NamedTuple):
    """How one worker process ended: its pid and its exit code as :attr:`multiprocessing.Process.exitcode`
    gives it (0 done, a positive exit status, or minus the number of the signal that killed it)."""

    pid: int
    exitcode: int

    @property
    def signal(self) -> int | None:
        """The number of the signal that killed the worker, or None when it exited."""
        return -self.exitcode if self.exitcode < 0 else None

    @property
    def signal_name(self) -> str | None:
        """The name of that signal (``SIGKILL``), or None (it exited, or the number has no name here)."""
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return None

    @property
    def died(self) -> bool:
        """It did not finish its work: killed by a signal, or a non-zero exit status."""
        return self.exitcode != 0

    def how(self, note: str | None = None) -> str:
        """``killed by signal 9 (SIGKILL)``, ``exited with status 1`` or ``exited``; a ``note`` goes in the
        parentheses after the signal's name (``killed by signal 9 (SIGKILL; NOTE)``)."""
        if self.signal is not None:
            notes = [n for n in (self.signal_name, note) if n]
            return f"killed by signal {self.signal}" + (f" ({'; '.join(notes)})" if notes else "")
        return f"exited with status {self.exitcode}" if self.exitcode else "exited"

    def __str__(self) -> str:
        return self.how()


class ForkedWorkers(Generic[T, R]):
    """Run ``work`` over tasks in forked processes; ``start`` runs first in each worker, ``take`` is how
    many tasks a worker takes at once."""

    def __init__(self, work: Callable[[T], R], *, take: int = 1, start: Callable[[], object] | None = None) -> None:
        if take < 1:
            raise ValueError("take must be at least 1")
        self._work = work
        self._take = take
        self._start = start
        self._procs: list[BaseProcess] = []
        self._exits: dict[int, WorkerExit] = {}

    @property
    def exits(self) -> tuple[WorkerExit, ...]:
        """How the workers of the last :meth:`run` that ended by themselves ended, as each one was reaped
        (while the run goes on: those reaped so far). Workers ended because the run was closed early are
        not among them."""
        return tuple(self._exits.values())

    @property
    def died(self) -> tuple[WorkerExit, ...]:
        """The :attr:`exits` of workers that did not finish their work (:attr:`WorkerExit.died`)."""
        return tuple(e for e in self._exits.values() if e.died)

    def run(self, tasks: Sequence[T], n: int) -> Generator[R, None, None]:
        """The results of ``tasks`` as they come from ``n`` workers, in no fixed order. A task whose
        worker died is not answered: the caller counts what it got, or looks at :attr:`died` (a worker
        is reaped, and its exit kept, as soon as its pipe ends). Closing the generator, or its end, ends
        and reaps the workers."""
        import multiprocessing
        from multiprocessing.connection import wait

        ctx = multiprocessing.get_context("fork")
        counter = ctx.Value("l", 0)
        readers: list[Connection] = []
        finished = False
        self._exits = {}
        gc.freeze()
        try:
            for _ in range(n):
                reader, writer = ctx.Pipe(duplex=False)
                readers.append(reader)
                # the worker closes its copies of the readers (its own and those of the workers before
                # it): if this process dies (SIGKILL), a worker's next result meets a pipe nobody reads
                # and it ends, rather than block on a full pipe it holds the other end of, forever
                p = ctx.Process(target=self._serve, args=(tasks, counter, writer, tuple(readers)), daemon=True)
                p.start()
                # the worker has its own copy: closing this one lets the reader see its end
                writer.close()
                self._procs.append(p)
            by_id = {id(r): (r, w) for r, w in zip(readers, self._procs)}
            while by_id:
                for ready in wait([r for r, _w in by_id.values()]):
                    r, worker = by_id[id(ready)]
                    try:
                        got = r.recv()
                    except EOFError:  # the worker is done (or died): it closes its pipe as it exits
                        del by_id[id(ready)]
                        worker.join()
                        self._ended(worker)
                        continue
                    if isinstance(got, BaseException):
                        raise got
                    yield got
            finished = True
        finally:
            for r in readers:
                r.close()
            self._reap(stop=not finished)
            gc.unfreeze()

    def _serve(self, tasks: Sequence[T], counter: Any, conn: Connection, readers: tuple[Connection, ...]) -> None:
        """A worker process: take tasks until none are left, send each one's result (``readers``: the
        parent's ends of the pipes, which it closes)."""
        code = 0
        try:
            for r in readers:
                r.close()
            # a short-lived process making many small objects and no cycles worth finding: the
            # collector would cost a tenth of its time
            gc.disable()
            if self._start is not None:
                self._start()
            take = self._take
            while True:
                with counter.get_lock():
                    i = counter.value
                    counter.value = i + take
                if i >= len(tasks):
                    break
                for task in tasks[i : i + take]:
                    conn.send(self._work(task))
        except BaseException as exc:  # noqa: BLE001 - sent to the parent, which raises it
            code = 1
            with contextlib.suppress(Exception):
                conn.send(exc)
        finally:
            with contextlib.suppress(Exception):
                conn.close()
            os._exit(code)

    def _reap(self, stop: bool) -> None:
        """Wait for every worker to end; with ``stop``, end those still running first (the parent no
        longer reads their results)."""
        for p in self._procs:
            stopped = stop and p.exitcode is None
            if stopped:
                p.terminate()
            p.join()
            if not stopped:
                self._ended(p)
            p.close()
        self._procs = []

    def _ended(self, p: BaseProcess) -> None:
        """Keep how the reaped worker ``p`` ended (once)."""
        if p.pid is not None and p.exitcode is not None and p.pid not in self._exits:
            self._exits[p.pid] = WorkerExit(p.pid, p.exitcode)

    def close(self) -> None:
        """End and reap the workers (none are left after :meth:`run` returns or raises)."""
        self._reap(stop=True)

    def __enter__(self) -> ForkedWorkers[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
