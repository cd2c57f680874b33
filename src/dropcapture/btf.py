"""A small pure-Python reader for BTF, the kernel's own type information.

dropcapture reads every kernel struct layout it depends on (``struct sk_buff`` offsets) and the
``enum skb_drop_reason`` names from the running kernel's BTF (``/sys/kernel/btf/vmlinux``) rather than
from kernel headers, which may belong to another kernel version.

Only what dropcapture needs is decoded: the header, the type records (all kinds are walked, so ids
are right), the string section, struct/union members (including members of anonymous nested
structs and unions) and enums.

Example::

    btf = Btf.load()
    head = btf.member("sk_buff", "head")          # Member(name='head', offset=..., size=8, ...)
    reasons = btf.enum("skb_drop_reason")          # {'SKB_NOT_DROPPED_YET': 0, ...}
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import BtfError

__all__ = ["BTF_PATH", "Btf", "Member"]

#: Where the kernel exposes its own BTF (CONFIG_DEBUG_INFO_BTF=y).
BTF_PATH = "/sys/kernel/btf/vmlinux"

_MAGIC = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h)
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19
# kinds whose size_or_type field is a type id to follow for the size
_MODIFIERS = {_TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _TYPE_TAG}
_SIZED = {_INT, _STRUCT, _UNION, _ENUM, _ENUM64, _FLOAT, _DATASEC}


def _extra_len(kind: int, vlen: int) -> int:
    # bytes that follow the 12-byte common record of one type
    if kind == _INT or kind == _VAR or kind == _DECL_TAG:
        return 4
    if kind == _ARRAY:
        return 12
    if kind in (_STRUCT, _UNION, _DATASEC, _ENUM64):
        return 12 * vlen
    if kind in (_ENUM, _FUNC_PROTO):
        return 8 * vlen
    if kind in (_PTR, _FWD, _TYPEDEF, _VOLATILE, _CONST, _RESTRICT, _FUNC, _FLOAT, _TYPE_TAG):
        return 0
    raise BtfError(f"unknown BTF kind {kind}")


@dataclass(frozen=True)
class Member:
    """One struct member as laid out in the running kernel."""

    #: Member name (the path for nested lookups is flattened: ``network_header``).
    name: str
    #: Byte offset from the start of the outer struct (anonymous containers included).
    offset: int
    #: Size in bytes of the member's type.
    size: int
    #: Bitfield width in bits, 0 for a plain member.
    bitfield_size: int = 0
    #: Bit offset from the start of the outer struct.
    bit_offset: int = 0


class Btf:
    """Parsed BTF blob: type records, string table and lazily built name indexes."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF data too short for a header")
        magic = struct.unpack_from("<H", data, 0)[0]
        if magic == _MAGIC:
            self._end = "<"
        elif magic == 0x9FEB:
            self._end = ">"
        else:
            raise BtfError(f"bad BTF magic {magic:#x}")
        e = self._end
        _magic, version, _flags, hdr_len = struct.unpack_from(e + "HBBI", data, 0)
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        type_off, type_len, str_off, str_len = struct.unpack_from(e + "IIII", data, 8)
        tstart = hdr_len + type_off
        sstart = hdr_len + str_off
        if tstart + type_len > len(data) or sstart + str_len > len(data):
            raise BtfError("BTF sections extend past the end of the data")
        self._data = data
        self._strings = data[sstart : sstart + str_len]
        # Per type id (index 0 is void): offset of the 12-byte record, kind, vlen, kind_flag.
        self._offs: list[int] = [0]
        self._kinds: list[int] = [0]
        self._names: dict[str, list[int]] = {}
        self._named_kinds = (_STRUCT, _UNION, _ENUM, _ENUM64, _TYPEDEF)
        unpack = struct.Struct(e + "III").unpack_from
        pos, end = tstart, tstart + type_len
        offs, kinds = self._offs, self._kinds
        pending: list[tuple[int, int]] = []
        while pos < end:
            name_off, info, _ = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            offs.append(pos)
            kinds.append(kind)
            if name_off and kind in self._named_kinds:
                pending.append((name_off, len(offs) - 1))
            pos += 12 + _extra_len(kind, vlen)
        if pos != end:
            raise BtfError("BTF type section is truncated")
        names = self._names
        for name_off, tid in pending:
            names.setdefault(self._str(name_off), []).append(tid)

    @classmethod
    def load(cls, path: str | Path = BTF_PATH) -> Btf:
        """Read and parse a BTF file (by default the running kernel's).

        :raises BtfError: the file is missing, unreadable or not BTF.
        """
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise BtfError(f"cannot read BTF {path}: {exc.strerror}") from exc
        return cls(data)

    # -- low level -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._offs) - 1

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode("utf-8", "replace")

    def _record(self, tid: int) -> tuple[int, int, int, bool, int]:
        # (name_off, kind, vlen, kind_flag, size_or_type)
        if tid <= 0 or tid >= len(self._offs):
            raise BtfError(f"BTF type id {tid} out of range")
        name_off, info, sot = struct.unpack_from(self._end + "III", self._data, self._offs[tid])
        return name_off, (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31), sot

    def kind(self, tid: int) -> int:
        """BTF kind number of type ``tid``."""
        return self._kinds[tid]

    def name(self, tid: int) -> str:
        """Name of type ``tid`` ("" when anonymous)."""
        return self._str(self._record(tid)[0]) if tid else "void"

    def resolve(self, tid: int) -> int:
        """Follow typedefs and qualifiers to the underlying type id."""
        for _ in range(64):
            if tid == 0:
                return 0
            _n, kind, _v, _kf, sot = self._record(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = sot
        raise BtfError("BTF typedef/qualifier chain too long")

    def size(self, tid: int) -> int:
        """Size in bytes of type ``tid`` (pointers: 8 on 64-bit BTF)."""
        tid = self.resolve(tid)
        if tid == 0:
            return 0
        _n, kind, _v, _kf, sot = self._record(tid)
        if kind in _SIZED:
            return int(sot)
        if kind == _PTR:
            return 8
        if kind == _ARRAY:
            elem, _idx, nelems = struct.unpack_from(self._end + "III", self._data, self._offs[tid] + 12)
            return self.size(elem) * int(nelems)
        raise BtfError(f"BTF type {tid} (kind {kind}) has no size")

    def find(self, name: str, kinds: tuple[int, ...]) -> int:
        """Id of the first type called ``name`` with one of ``kinds``.

        :raises BtfError: no such type.
        """
        for tid in self._names.get(name, ()):
            if self._kinds[tid] in kinds:
                _n, _k, vlen, _kf, _s = self._record(tid)
                # prefer a complete definition over an empty one
                if vlen or self._kinds[tid] in (_TYPEDEF,):
                    return tid
        raise BtfError(f"no {name!r} in BTF")

    # -- structs ---------------------------------------------------------------------------------

    def members(self, tid: int) -> list[tuple[str, int, int, int]]:
        """Direct members of struct/union ``tid``: (name, type id, bit offset, bitfield size)."""
        tid = self.resolve(tid)
        _n, kind, vlen, kflag, _s = self._record(tid)
        if kind not in (_STRUCT, _UNION):
            raise BtfError(f"BTF type {tid} is not a struct or union")
        out = []
        base = self._offs[tid] + 12
        for i in range(vlen):
            name_off, mtype, moff = struct.unpack_from(self._end + "III", self._data, base + 12 * i)
            bits = 0
            if kflag:
                bits, moff = moff >> 24, moff & 0xFFFFFF
            out.append((self._str(name_off), mtype, moff, bits))
        return out

    def struct(self, name: str) -> int:
        """Id of ``struct name`` (or a union of that name, or a typedef of one such as ``possible_net_t``)."""
        try:
            return self.find(name, (_STRUCT, _UNION))
        except BtfError:
            tid = self.resolve(self.find(name, (_TYPEDEF,)))
            if self._kinds[tid] not in (_STRUCT, _UNION):
                raise BtfError(f"{name!r} is not a struct or union in BTF") from None
            return tid

    def member(self, struct_name: str, member: str) -> Member:
        """Locate ``member`` in ``struct struct_name``, looking inside anonymous structs/unions.

        :raises BtfError: the struct or member does not exist.
        """
        found = self._find_member(self.struct(struct_name), member, 0)
        if found is None:
            raise BtfError(f"struct {struct_name} has no member {member!r} in BTF")
        return found

    def member_path(self, struct_name: str, path: str) -> Member:
        """Locate a nested member such as ``nd_net.net`` in ``struct net_device``: each step names a member
        of the struct (or union) the previous step's type is, through anonymous containers; the offset is
        from the start of ``struct struct_name``.

        :raises BtfError: a step does not exist or is not inside a struct/union (a pointer is not followed).
        """
        tid = self.struct(struct_name)
        where = f"struct {struct_name}"
        bit_base = 0
        found: Member | None = None
        for step in path.split("."):
            if found is not None:
                tid = self.resolve(self._member_type(tid, found.name))
                if self._kinds[tid] not in (_STRUCT, _UNION):
                    raise BtfError(f"{where} is not a struct or union in BTF (a pointer is not followed)")
            found = self._find_member(tid, step, bit_base)
            if found is None:
                raise BtfError(f"{where} has no member {step!r} in BTF")
            bit_base = found.bit_offset
            where = f"{where}.{step}"
        if found is None:
            raise BtfError(f"empty member path for struct {struct_name}")
        return Member(path, found.offset, found.size, found.bitfield_size, found.bit_offset)

    def _member_type(self, tid: int, member: str) -> int:
        # the type id of ``member`` (searched like _find_member) in struct/union ``tid``
        anonymous = []
        for name, mtype, _boff, _bits in self.members(tid):
            if name == member:
                return mtype
            if not name and self._kinds[self.resolve(mtype)] in (_STRUCT, _UNION):
                anonymous.append(mtype)
        for mtype in anonymous:
            try:
                return self._member_type(self.resolve(mtype), member)
            except KeyError:
                continue
        raise KeyError(member)

    def _find_member(self, tid: int, member: str, bit_base: int) -> Member | None:
        anonymous = []
        for name, mtype, boff, bits in self.members(tid):
            if name == member:
                bit = bit_base + boff
                size = self.size(mtype)
                return Member(name, bit // 8, size, bits, bit)
            if not name and self._kinds[self.resolve(mtype)] in (_STRUCT, _UNION):
                anonymous.append((mtype, bit_base + boff))
        for mtype, base in anonymous:
            hit = self._find_member(self.resolve(mtype), member, base)
            if hit is not None:
                return hit
        return None

    # -- enums -----------------------------------------------------------------------------------

    def enum(self, name: str) -> dict[str, int]:
        """Enumerators of ``enum name`` as {name: value}.

        :raises BtfError: no such enum.
        """
        tid = self.find(name, (_ENUM, _ENUM64))
        _n, kind, vlen, kflag, _s = self._record(tid)
        base = self._offs[tid] + 12
        out: dict[str, int] = {}
        e = self._end
        for i in range(vlen):
            if kind == _ENUM:
                name_off, val = struct.unpack_from(e + ("Ii" if kflag else "II"), self._data, base + 8 * i)
            else:
                name_off, lo, hi = struct.unpack_from(e + "III", self._data, base + 12 * i)
                val = (hi << 32) | lo
            out[self._str(name_off)] = val
        return out
