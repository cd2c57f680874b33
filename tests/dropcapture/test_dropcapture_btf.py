"""BTF reader: the running kernel's BTF, plus hand-built blobs for the edge cases."""

from __future__ import annotations

import struct

import pytest

from dropcapture.btf import Btf
from dropcapture.errors import BtfError


class BtfWriter:
    """Builds a minimal little- or big-endian BTF blob."""

    def __init__(self, endian: str = "<") -> None:
        self.e = endian
        self.types: list[bytes] = []
        self.strings = b"\0"

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, sot: int, extra: bytes = b"", kflag: bool = False) -> int:
        info = (kind << 24) | vlen | (1 << 31 if kflag else 0)
        self.types.append(struct.pack(self.e + "III", self.s(name), info, sot) + extra)
        return len(self.types)

    def int_(self, name: str, size: int) -> int:
        return self.add(name, 1, 0, size, struct.pack(self.e + "I", size * 8))

    def ptr(self, to: int) -> int:
        return self.add("", 2, 0, to)

    def struct_(self, name: str, size: int, members: list[tuple[str, int, int]], kind: int = 4,
                kflag: bool = False) -> int:
        extra = b"".join(struct.pack(self.e + "III", self.s(n), t, off) for n, t, off in members)
        return self.add(name, kind, len(members), size, extra, kflag)

    def enum(self, name: str, values: list[tuple[str, int]]) -> int:
        extra = b"".join(struct.pack(self.e + "Ii", self.s(n), v) for n, v in values)
        return self.add(name, 6, len(values), 4, extra)

    def blob(self) -> bytes:
        types = b"".join(self.types)
        hdr = struct.pack(self.e + "HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(self.strings))
        return hdr + types + self.strings


def _sample(endian: str = "<") -> bytes:
    w = BtfWriter(endian)
    u16 = w.int_("unsigned short", 2)
    u8 = w.int_("unsigned char", 1)
    p = w.ptr(u8)
    td = w.add("__u16", 8, 0, u16)  # typedef
    inner = w.struct_("", 4, [("transport_header", td, 0), ("network_header", u16, 16)])
    named = w.struct_("", 4, [("transport_header", u16, 0), ("network_header", u16, 16)])
    union = w.struct_("", 4, [("", inner, 0), ("headers", named, 0)], kind=5)
    w.struct_("sk_buff", 32, [("len", u16, 0), ("", union, 64), ("head", p, 128), ("bits", u8, 3 << 24 | 200)],
              kflag=True)
    w.enum("skb_drop_reason", [("SKB_NOT_DROPPED_YET", 0), ("SKB_DROP_REASON_NO_SOCKET", 3)])
    return w.blob()


@pytest.mark.parametrize("endian", ["<", ">"])
def test_synthetic_anonymous_union_members(endian: str) -> None:
    btf = Btf(_sample(endian))
    nh = btf.member("sk_buff", "network_header")
    assert (nh.offset, nh.size, nh.bitfield_size) == (8 + 2, 2, 0)
    th = btf.member("sk_buff", "transport_header")
    assert (th.offset, th.size) == (8, 2)  # through the typedef
    head = btf.member("sk_buff", "head")
    assert (head.offset, head.size) == (16, 8)
    bits = btf.member("sk_buff", "bits")
    assert bits.bitfield_size == 3 and bits.bit_offset == 200
    assert btf.enum("skb_drop_reason") == {"SKB_NOT_DROPPED_YET": 0, "SKB_DROP_REASON_NO_SOCKET": 3}
    with pytest.raises(BtfError):
        btf.member("sk_buff", "nope")
    with pytest.raises(BtfError):
        btf.struct("task_struct")


def test_bad_blobs() -> None:
    with pytest.raises(BtfError):
        Btf(b"\0" * 10)
    with pytest.raises(BtfError):
        Btf(b"\x12\x34" + b"\0" * 30)
    good = _sample()
    with pytest.raises(BtfError):
        Btf(good[:-10])  # strings cut off
    with pytest.raises(BtfError):
        Btf.load("/nonexistent/btf")


def test_running_kernel_sk_buff(need_btf: None) -> None:
    btf = Btf.load()
    assert len(btf) > 10000
    head = btf.member("sk_buff", "head")
    assert head.size == 8 and head.bitfield_size == 0
    for name in ("network_header", "transport_header", "mac_header", "protocol"):
        m = btf.member("sk_buff", name)
        assert m.size == 2 and m.bitfield_size == 0 and m.bit_offset % 8 == 0, m
    # network_header lives in an anonymous struct inside the struct_group(headers) union, not at top level
    top = {name for name, *_ in btf.members(btf.struct("sk_buff"))}
    assert "network_header" not in top and "head" in top
    # the union's named twin ("headers") holds the same offsets
    assert btf.member("sk_buff", "network_header").offset > btf.member("sk_buff", "len").offset
    reasons = btf.enum("skb_drop_reason")
    assert reasons["SKB_DROP_REASON_NOT_SPECIFIED"] == 2
    assert "SKB_DROP_REASON_NETFILTER_DROP" in reasons
