"""Answering many addresses ahead of use: :class:`Prefetcher`, in forked worker processes when it pays.

A dump's frames are answered before they are printed. The addresses are grouped by the compilation
unit holding them; when many units must be read from the DWARF (neither in memory nor in the index) and
this process runs a single thread, the groups are handed to forked worker processes, a few units per
task, biggest groups first so the workers finish together. Each worker answers its groups, writes the
units it read to the index as one pack per task, and sends back a :class:`PrefetchResult` (the answers
as records, where the units are stored); the parent merges them into its session. Otherwise the groups
are answered in this process, unit by unit, the stored ones pack by pack.

The workers are :class:`ksym.workers.ForkedWorkers`: they get everything through their process's
target and arguments (inherited with the ``fork`` start method, not pickled; no module-level state),
run with the collector off and leave by ``os._exit``. Errors other than
:class:`ksym.errors.KsymError` in a worker are raised in the parent; a KsymError is left for the
lookup in order to raise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING

from .errors import KsymError
from .records import NamedTuple
from .session import AnswerRecords, Session, StoredAnswers

if TYPE_CHECKING:
    from .dwarf_image import DwarfImage
    from .workers import ForkedWorkers

__all__ = ["PrefetchResult", "PrefetchTask", "Prefetcher"]

#: Fewer units than this per process are read in this process (a fork costs more than they do).
UNITS_PER_PROCESS = 24

#: At most this many units make one task of a prefetch worker.
UNITS_PER_TASK = 8

#: At most this many worker processes.
MAX_PROCESSES = 8

CallSite = tuple[int, "int | None"]


class PrefetchTask(NamedTuple):
    """What one worker task answers: per unit, its addresses and its call sites."""

    groups: tuple[tuple[tuple[int, ...], tuple[CallSite, ...]], ...]


class PrefetchResult(NamedTuple):
    """What a worker sends back for one task."""

    #: the answers it worked out
    answers: AnswerRecords
    #: unit offset → pack of the index it stored the unit in
    units: dict[int, str]


class Prefetcher:
    """Answers addresses and call sites of one image ahead of use (see the module's documentation).

    :param dwarf: the image's DWARF (None: no DWARF, every address answered from the symbols).
    :param index: the image's session (units stored, answers: :class:`ksym.session.Session`).
    :param answers: its stored answers (what is answered already; where new answers go).
    :param answer: works out and keeps the answer for an address (may raise KsymError).
    :param answer_call: works out and keeps the instruction before a ``(return address, function
        start)`` call site.
    :param processes: at most this many workers (default: the usable CPUs, at most 8).

    Workers exist only inside :meth:`run`; :meth:`close` (or leaving a ``with`` block) ends any that
    an interrupted run left.
    """

    def __init__(self, dwarf: DwarfImage | None, index: Session, answers: StoredAnswers,
                 answer: Callable[[int], object], answer_call: Callable[[int, int | None], object], *,
                 processes: int | None = None) -> None:
        self._dwarf = dwarf
        self._index = index
        self._answers = answers
        self._answer = answer
        self._answer_call = answer_call
        self._processes = processes
        self._workers: ForkedWorkers[PrefetchTask, PrefetchResult] | None = None
        #: addresses whose answers came from workers (looked up in them)
        self.looked_up = 0

    def _unit_of(self, address: int) -> int | None:
        return self._dwarf.unit_offset(address) if self._dwarf is not None else None

    def run(self, addresses: Iterable[int], call_sites: Iterable[CallSite] = ()) -> int:
        """Answer ``addresses`` not answered yet, and the call sites with them in the workers; returns
        how many addresses were answered."""
        answers = self._answers
        todo = sorted({a for a in addresses if not answers.has_chain(a)})
        if not todo:
            return 0
        by_unit: dict[int | None, list[int]] = {}
        for a in todo:
            by_unit.setdefault(self._unit_of(a), []).append(a)
        index = self._index
        dwarf = self._dwarf
        cold = [off for off in by_unit
                if off is not None and dwarf is not None and not dwarf.in_memory(off) and index.pack_of(off) is None]
        if self._processes is not None:
            n = self._processes
        else:
            from .workers import usable_cpus

            n = usable_cpus()
        n = min(n, MAX_PROCESSES, max(1, len(cold) // UNITS_PER_PROCESS))
        # fork only a single-threaded process (a forked copy of a thread holding a lock can hang)
        import threading  # a thread anyone started has imported it already

        if n < 2 or not hasattr(os, "fork") or threading.active_count() > 1:
            # unit by unit, the stored ones pack by pack
            for off in sorted(by_unit, key=lambda o: ((index.pack_of(o) or "") if o is not None else "", o or 0)):
                for a in by_unit[off]:
                    with contextlib.suppress(KsymError):
                        self._answer(a)
            return len(todo)
        # a call site is disassembled by the worker that reads the unit of the call (its line row
        # is where the sweep starts)
        calls_by_unit: dict[int | None, list[CallSite]] = {}
        for c in sorted({c for c in call_sites if not answers.has_instruction(c[0], c[1])},
                        key=lambda c: (c[0], -1 if c[1] is None else c[1])):
            calls_by_unit.setdefault(self._unit_of(c[0] - 1), []).append(c)
        work = [(tuple(group), tuple(calls_by_unit.pop(off, []))) for off, group in by_unit.items()]
        work += [((), tuple(group)) for group in calls_by_unit.values()]
        # units differ tenfold in cost: hand them out a few at a time, biggest groups first, so the
        # workers finish together
        work.sort(key=lambda w: len(w[0]) + len(w[1]), reverse=True)
        size = max(1, min(UNITS_PER_TASK, len(work) // (4 * n)))
        tasks = [PrefetchTask(tuple(work[i : i + size])) for i in range(0, len(work), size)]
        got = 0
        with contextlib.closing(self._in_workers(tasks, n)) as results:
            for result in results:
                answers.merge(result.answers)
                got += len(result.answers.chains)
                if dwarf is not None:
                    dwarf.units_read.update(result.units)
                index.add_units(result.units)
        self.looked_up += got
        return got

    # -- the workers --

    def _in_workers(self, tasks: list[PrefetchTask], n: int) -> Generator[PrefetchResult, None, None]:
        """Run ``tasks`` in ``n`` forked workers (:class:`ksym.workers.ForkedWorkers`); their results as
        they come. Closing the generator (or its end) ends and reaps the workers."""
        from .workers import ForkedWorkers

        workers: ForkedWorkers[PrefetchTask, PrefetchResult] = ForkedWorkers(self._task, start=self._start_worker)
        self._workers = workers
        try:
            yield from workers.run(tasks, n)
        finally:
            workers.close()
            self._workers = None

    def _start_worker(self) -> None:
        """In a new worker: what the parent learnt before the fork is not the worker's to send."""
        self._answers.take_new()
        self._index.take_new_units()

    def _task(self, task: PrefetchTask) -> PrefetchResult:
        """In a worker: answer each group of addresses and call sites (one unit each), write the units
        read to the index as one pack, and return the answers and where the units are."""
        for group, calls in task.groups:
            for a in group:
                with contextlib.suppress(KsymError):
                    self._answer(a)
            for ret, start in calls:
                with contextlib.suppress(KsymError):
                    self._answer_call(ret, start)
        with contextlib.suppress(OSError):
            self._index.write_units()
        return PrefetchResult(self._answers.take_new(), self._index.take_new_units())

    # -- lifecycle --

    def close(self) -> None:
        """End and reap the workers (none are left after :meth:`run` returns or raises)."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    def __enter__(self) -> Prefetcher:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
