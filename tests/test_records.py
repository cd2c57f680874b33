"""ksym.records: the record classes are :func:`collections.namedtuple`'s, made without compiling source.

Each shape below is made both ways and used the ways ksym and its users use records (positional and
keyword construction, defaults, the fields, ``_make``, ``_replace``, ``_asdict``, ``repr``, equality,
hashing, unpacking, ``match``, pickling, copying, the errors of a wrong call): the results must agree.
"""

from __future__ import annotations

import collections
import copy
import pickle
from typing import Any

import pytest

from ksym.portable import Entry
from ksym.records import NamedTuple, record_class
from ksym.symbols import FaddrMatch, Section


class Point(NamedTuple):
    """A point."""

    x: int
    y: int = 0
    label: str = "p"

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


SHAPES: list[tuple[list[str], tuple[Any, ...]]] = [
    ([], ()),
    (["a"], ()),
    (["a"], (1,)),
    (["a", "b", "c"], ()),
    (["a", "b", "c"], (None, 3)),
    ([f"f{i}" for i in range(15)], tuple(range(4))),
    ([f"f{i}" for i in range(16)], ()),  # more fields than the ready-made functions: namedtuple's
    (["self", "cls", "kwds"], ()),  # names a generated method uses itself
]


def _outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except (TypeError, ValueError) as exc:
        return (type(exc).__name__,)


@pytest.mark.parametrize(("fields", "defaults"), SHAPES)
def test_a_record_class_behaves_as_namedtuple(fields: list[str], defaults: tuple[Any, ...]) -> None:
    ours = record_class("R", fields, defaults, __name__)
    theirs = collections.namedtuple("R", fields, defaults=defaults, module=__name__)
    n = len(fields)
    assert ours._fields == theirs._fields == tuple(fields)
    assert ours._field_defaults == theirs._field_defaults
    assert ours.__match_args__ == theirs.__match_args__
    assert ours.__doc__ == theirs.__doc__ and ours.__new__.__doc__ == theirs.__new__.__doc__
    assert ours.__module__ == theirs.__module__ == __name__
    values = [f"v{i}" for i in range(n)]
    for args in (values, values[: n - len(defaults)], values[:-1] if n else [], [*values, "extra"]):
        got, want = _outcome(lambda a=args: ours(*a)), _outcome(lambda a=args: theirs(*a))
        assert got[0] == want[0] and (got[0] != "ok" or (tuple(got[1]) == tuple(want[1]) and repr(got[1]) == repr(want[1])))
    by_name = dict(zip(fields, values))
    a, b = ours(**by_name), theirs(**by_name)
    assert tuple(a) == tuple(b) and repr(a) == repr(b) and a._asdict() == b._asdict()
    assert hash(a) == hash(tuple(values)) and a == tuple(values) and len(a) == n
    assert [getattr(a, f) for f in fields] == values
    assert _outcome(lambda: ours(**by_name, nope=1))[0] == _outcome(lambda: theirs(**by_name, nope=1))[0] == "TypeError"
    assert tuple(ours._make(values)) == tuple(values)
    for wrong in (values[:-1], [*values, 0]) if n else ([0],):
        assert _outcome(lambda w=wrong: ours._make(w))[0] == _outcome(lambda w=wrong: theirs._make(w))[0] == "TypeError"
    if n:
        assert tuple(a._replace(**{fields[0]: "new"})) == ("new", *values[1:])
        assert type(a._replace(**{fields[0]: "new"})) is ours
    assert _outcome(lambda: a._replace(nope=1))[0] == _outcome(lambda: b._replace(nope=1))[0] == "ValueError"
    assert copy.copy(a) == a and copy.deepcopy(a) == a and type(copy.copy(a)) is ours
    with pytest.raises(AttributeError):
        a.extra = 1  # type: ignore[attr-defined]  # no __dict__: slots only


def test_the_class_syntax_makes_such_a_class_with_its_methods() -> None:
    p = Point(3, -4)
    assert (p, Point(1, label="q")) == ((3, -4, "p"), (1, 0, "q"))
    assert repr(p) == "Point(x=3, y=-4, label='p')" and p.norm1() == 7 and Point.__doc__ == "A point."
    assert Point._fields == ("x", "y", "label") and Point._field_defaults == {"y": 0, "label": "p"}
    assert pickle.loads(pickle.dumps(p)) == p and type(pickle.loads(pickle.dumps(p))) is Point
    match p:
        case Point(x, y):
            assert (x, y) == (3, -4)
        case _:
            pytest.fail("no match")
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]


def test_ksym_records_are_made_without_compiling_source() -> None:
    """The records of a one-frame run are made by record_class: their ``__new__`` is one of the functions
    compiled with ksym.records, renamed to the fields."""
    for record in (Entry, Section, FaddrMatch, Point):
        code = record.__new__.__code__
        assert code.co_filename.endswith("records.py") and code.co_varnames == ("_cls", *record._fields)
