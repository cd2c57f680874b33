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

__all__ = ["NamedTuple"]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple
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
