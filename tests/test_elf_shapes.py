"""Other ELF shapes against binutils ``addr2line -fi``: raw addresses of any length."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("text", "address"), [
    ("0x5e0", 0x5E0), ("0x17ce7", 0x17CE7), ("0X1f", 0x1F), ("0x0", 0),
    ("0xffffffff8184586e", 0xFFFFFFFF8184586E), ("ffffffff8184586e", 0xFFFFFFFF8184586E),
    ("0x000000000000000005e0", 0x5E0),
])
def test_raw_addresses_of_any_length(text: str, address: int) -> None:
    from ksym import AddressSpec, parse_spec

    assert parse_spec(text) == AddressSpec(text, address)


@pytest.mark.parametrize("text", ["deadbeef", "5e0", "0x", "0x1ffffffffffffffff", "0xfg"])
def test_not_raw_addresses(text: str) -> None:
    """Bare hex shorter than 16 digits could be a name (faddr2line: ``bad func+offset``); past 64 bits
    is no address."""
    from ksym import SpecError, parse_spec

    with pytest.raises(SpecError, match="bad func\\+offset"):
        parse_spec(text)
