"""``NamedTuple`` for ksym's records: :class:`typing.NamedTuple`'s class syntax, made at import without
typing's checks of each field's annotation.

ksym's modules use ``from __future__ import annotations``, so every annotation is a string, and
:class:`typing.NamedTuple` turns each one into a :class:`typing.ForwardRef`, which compiles it: the
first ``compile()`` of a process builds every class of the :mod:`ast` module, and a command that
imports a few dozen records (a warm ``ksym resolve`` of one frame) spends more on that than on its
lookup. The class made here is what :class:`typing.NamedTuple` makes, :func:`collections.namedtuple`
with the fields in order, their defaults, the annotations (left as written) and the class body's
methods, properties and docstring; a type checker sees :class:`typing.NamedTuple` itself.

    class Point(NamedTuple):
        x: int
        y: int = 0
"""

from __future__ import annotations

import collections

__all__ = ["MutableRecord", "NamedTuple"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar, NamedTuple
else:
    # what typing.NamedTuple forbids a class body to set, and what it does not copy from it
    _PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                             "_make", "_replace", "_asdict", "_source"})
    _SPECIAL = frozenset({"__module__", "__name__", "__annotations__"})

    class _NamedTupleMeta(type):
        def __new__(cls, typename, bases, ns):
            if bases != (_NamedTupleBase,):
                raise TypeError("a NamedTuple record derives from NamedTuple alone")
            annotations = ns.get("__annotations__", {})
            defaults = []
            for name in annotations:
                if name in ns:
                    defaults.append(ns[name])
                elif defaults:
                    raise TypeError(f"non-default NamedTuple field {name} cannot follow default field(s) "
                                    f"{', '.join(n for n in annotations if n in ns)}")
            record = collections.namedtuple(typename, list(annotations), defaults=defaults, module=ns["__module__"])
            record.__annotations__ = dict(annotations)
            for key, value in ns.items():
                if key in _PROHIBITED:
                    raise AttributeError(f"Cannot overwrite NamedTuple attribute {key}")
                if key not in _SPECIAL and key not in annotations:
                    setattr(record, key, value)
            return record

    _NamedTupleBase = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
    NamedTuple = _NamedTupleBase


class MutableRecord:
    """A mutable record's base: equality and ``repr`` field by field, in the order of ``_fields``, as a
    dataclass gives (the caches in the rest of a subclass's ``__slots__`` take no part). Slotted classes on
    this base rather than dataclasses: :mod:`dataclasses` imports :mod:`inspect` (with :mod:`ast`,
    :mod:`dis`, :mod:`tokenize`) and makes each class with ``exec``, which short runs would pay for."""

    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self._fields)})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self._fields)

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable, as a dataclass with eq=True
