"""Forked worker processes that take tasks from a shared counter: :class:`ForkedWorkers`.

Used by the prefetch of many cold units (:mod:`ksym.prefetch`) and by ``ksym index build``
(:mod:`ksym.portable_build`). The workers are made with the ``fork`` start method, so the work
function and the task list are inherited, not pickled, and no module-level state is involved. Each
worker takes ``take`` tasks at a time from a counter shared with the others (so that tasks of very
different cost spread over the workers), sends each result back through its own pipe, runs with the
garbage collector off and leaves by ``os._exit`` (it writes nothing of its parent's, such as buffered
output). An exception in a worker is sent to the parent and raised there. While the workers run, the
parent freezes the collector's view of its objects (they share them copy-on-write). Every worker is
reaped before :meth:`ForkedWorkers.run` ends, also when its caller stops reading or raises.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = ["ForkedWorkers"]

T = TypeVar("T")
R = TypeVar("R")


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

    def run(self, tasks: Sequence[T], n: int) -> Generator[R, None, None]:
        """The results of ``tasks`` as they come from ``n`` workers, in no fixed order. A task whose
        worker died is not answered (the caller counts what it got). Closing the generator, or its end,
        ends and reaps the workers."""
        import multiprocessing
        from multiprocessing.connection import wait

        ctx = multiprocessing.get_context("fork")
        counter = ctx.Value("l", 0)
        readers: list[Connection] = []
        finished = False
        gc.freeze()
        try:
            for _ in range(n):
                reader, writer = ctx.Pipe(duplex=False)
                p = ctx.Process(target=self._serve, args=(tasks, counter, writer), daemon=True)
                p.start()
                # the worker has its own copy: closing this one lets the reader see its end
                writer.close()
                self._procs.append(p)
                readers.append(reader)
            by_id = {id(r): r for r in readers}
            while by_id:
                for ready in wait(list(by_id.values())):
                    r = by_id[id(ready)]
                    try:
                        got = r.recv()
                    except EOFError:  # the worker is done (or died)
                        del by_id[id(ready)]
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

    def _serve(self, tasks: Sequence[T], counter: Any, conn: Connection) -> None:
        """A worker process: take tasks until none are left, send each one's result."""
        code = 0
        try:
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
            if stop and p.exitcode is None:
                p.terminate()
            p.join()
            p.close()
        self._procs = []

    def close(self) -> None:
        """End and reap the workers (none are left after :meth:`run` returns or raises)."""
        self._reap(stop=True)

    def __enter__(self) -> ForkedWorkers[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
