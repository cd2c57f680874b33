"""``NamedTuple`` for ksym's records: :class:`typing.NamedTuple`'s class syntax, made at import without
typing's checks of each field's annotation.

ksym's modules use ``from __future__ import annotations``, so every annotation is a string, and
:class:`typing.NamedTuple` turns each one into a :class:`typing.ForwardRef`, which compiles it: the
first ``compile()`` of a process builds every class of the :mod:`ast` module, and a command that
imports a few dozen records (a warm ``ksym resolve`` of one frame) spends more on that than on its
lookup. The class made here is what :class:`typing.NamedTuple` makes, a :func:`collections.namedtuple`
with the fields in order, their defaults, the annotations (left as written) and the class body's
methods, properties and docstring; a type checker sees :class:`typing.NamedTuple` itself.

The tuple class is made by :func:`record_class`, which is :func:`collections.namedtuple` without its
``eval``: that compiles a ``__new__`` for each class, some 60 microseconds a class in a new process,
and a one-frame run makes 30 to 40 record classes. Here ``__new__`` is one of the functions below,
compiled with this module, renamed to the fields (a function's parameter names are data of its code
object); records of more fields are left to :func:`collections.namedtuple`.

    class Point(NamedTuple):
        x: int
        y: int = 0
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from keyword import iskeyword
from types import FunctionType
from typing import Any

try:
    from _collections import _tuplegetter  # what collections.namedtuple uses for its fields
except ImportError:  # another implementation of Python: a property, as collections.namedtuple falls back to
    from operator import itemgetter

    def _tuplegetter(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)

__all__ = ["MutableRecord", "NamedTuple", "record_class"]

_tuple_new = tuple.__new__

#: ``__new__`` of records of 0 to 15 fields (parameters renamed to the fields by :func:`record_class`)
_NEW: tuple[Callable[..., Any], ...] = (
    lambda _cls: _tuple_new(_cls, ()),
    lambda _cls, a0: _tuple_new(_cls, (a0,)),
    lambda _cls, a0, a1: _tuple_new(_cls, (a0, a1)),
    lambda _cls, a0, a1, a2: _tuple_new(_cls, (a0, a1, a2)),
    lambda _cls, a0, a1, a2, a3: _tuple_new(_cls, (a0, a1, a2, a3)),
    lambda _cls, a0, a1, a2, a3, a4: _tuple_new(_cls, (a0, a1, a2, a3, a4)),
    lambda _cls, a0, a1, a2, a3, a4, a5: _tuple_new(_cls, (a0, a1, a2, a3, a4, a5)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6: _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6, a7: _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6, a7)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6, a7, a8: _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6, a7, a8)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9:
        _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10:
        _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11:
        _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12:
        _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13:
        _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14:
        _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14)),
    lambda _cls, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15:
        _tuple_new(_cls, (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15)),
)


def record_class(typename: str, fields: Iterable[str], defaults: Iterable[Any], module: str) -> type:
    """``collections.namedtuple(typename, fields, defaults=defaults, module=module)``, made without compiling
    source (see the module's documentation): the same class, with the same ``__new__`` signature, field
    properties, ``_make``, ``_replace``, ``_asdict``, ``__repr__`` and pickling."""
    names = tuple(map(str, fields))
    defaults = tuple(defaults)
    n = len(names)
    plain = all(f.isidentifier() and not iskeyword(f) and not f.startswith("_") for f in names)
    if n >= len(_NEW) or len(set(names)) != n or len(defaults) > n or not plain:
        return collections.namedtuple(typename, names, defaults=defaults, module=module)
    template = _NEW[n]
    new = FunctionType(template.__code__.replace(co_varnames=("_cls", *names), co_name="__new__"),
                       template.__globals__, "__new__", defaults or None)
    new.__qualname__ = f"{typename}.__new__"
    arg_list = repr(names).replace("'", "")[1:-1]  # as collections.namedtuple spells it: "a," for one
    new.__doc__ = f"Create new instance of {typename}({arg_list})"
    repr_fmt = "(" + ", ".join(f"{name}=%r" for name in names) + ")"

    def _make(cls: type, iterable: Iterable[Any]) -> Any:
        result: tuple[Any, ...] = _tuple_new(cls, iterable)
        if len(result) != n:
            raise TypeError(f"Expected {n} arguments, got {len(result)}")
        return result

    def _replace(self: Any, /, **kwds: Any) -> Any:
        result = self._make(map(kwds.pop, names, self))
        if kwds:
            raise ValueError(f"Got unexpected field names: {list(kwds)!r}")
        return result

    def __repr__(self: Any) -> str:
        return f"{self.__class__.__name__}{repr_fmt % self}"

    def _asdict(self: Any) -> dict[str, Any]:
        return dict(zip(self._fields, self))

    def __getnewargs__(self: Any) -> tuple[Any, ...]:
        return tuple(self)

    for f in (_make, _replace, __repr__, _asdict, __getnewargs__):
        f.__qualname__ = f"{typename}.{f.__name__}"
    namespace: dict[str, Any] = {
        "__doc__": f"{typename}({arg_list})",
        "__slots__": (),
        "_fields": names,
        "_field_defaults": dict(zip(names[n - len(defaults):], defaults)),
        "__new__": new,
        "_make": classmethod(_make),
        "_replace": _replace,
        "__repr__": __repr__,
        "_asdict": _asdict,
        "__getnewargs__": __getnewargs__,
        "__match_args__": names,
    }
    for i, name in enumerate(names):
        namespace[name] = _tuplegetter(i, f"Alias for field number {i}")
    record = type(typename, (tuple,), namespace)
    record.__module__ = module
    return record


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
            record = record_class(typename, annotations, defaults, ns["__module__"])
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
