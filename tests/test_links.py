"""Elixir links (ksym.links)."""

from __future__ import annotations

import pytest

from ksym.links import ElixirLinks, ident_name, kernel_relative_path


def test_source_and_ident_urls() -> None:
    links = ElixirLinks("v6.1.187")
    assert links.source_url("net/ipv4/ip_output.c", 115) == (
        "https://elixir.bootlin.com/linux/v6.1.187/source/net/ipv4/ip_output.c#L115"
    )
    assert links.ident_url("__ip_local_out") == (
        "https://elixir.bootlin.com/linux/v6.1.187/A/ident/__ip_local_out"
    )
    assert links.source_url("include/linux/netfilter.h", 0) == (
        "https://elixir.bootlin.com/linux/v6.1.187/source/include/linux/netfilter.h"
    )


def test_self_hosted_base_url() -> None:
    links = ElixirLinks("v6.18-rc3", base_url="http://127.0.0.1:8080/elixir/")
    assert links.source_url("./mm/slub.c", 7) == (
        "http://127.0.0.1:8080/elixir/linux/v6.18-rc3/source/mm/slub.c#L7"
    )
    assert links.ident_url("kfree") == "http://127.0.0.1:8080/elixir/linux/v6.18-rc3/A/ident/kfree"
    with pytest.raises(ValueError):
        ElixirLinks("v6.1", base_url="elixir.bootlin.com")
    with pytest.raises(ValueError):
        ElixirLinks("v6 1")


def test_quoting() -> None:
    links = ElixirLinks("v6.1")
    assert links.source_url("drivers/a b/c#d.c", 3) == (
        "https://elixir.bootlin.com/linux/v6.1/source/drivers/a%20b/c%23d.c#L3"
    )
    assert ElixirLinks("odd/tag?x").ident_url("f") == (
        "https://elixir.bootlin.com/linux/odd%2Ftag%3Fx/A/ident/f"
    )


def test_clone_suffixes_and_unknowns() -> None:
    links = ElixirLinks("v6.1.187")
    assert links.ident_url("tcp_v4_rcv.cold") == (
        "https://elixir.bootlin.com/linux/v6.1.187/A/ident/tcp_v4_rcv"
    )
    assert ident_name("ip_finish_output2.constprop.0") == "ip_finish_output2"
    assert ident_name("foo.isra.0.cold") == "foo"
    assert ident_name("??") is None
    assert links.ident_url("??") is None
    assert links.source_url("??", 0) is None


def test_kernel_relative_path() -> None:
    assert kernel_relative_path("net/ipv4/ip_output.c") == "net/ipv4/ip_output.c"
    assert kernel_relative_path("./net//ipv4/ip_output.c") == "net/ipv4/ip_output.c"
    assert kernel_relative_path("/build/linux-Q2x/net/ipv4/ip_output.c") == "net/ipv4/ip_output.c"
    assert kernel_relative_path("/usr/src/linux-6.1/mm/slub.c") == "mm/slub.c"
    assert kernel_relative_path("/home/me/notes.txt") is None
    assert kernel_relative_path("../etc/passwd") is None
    assert kernel_relative_path("") is None


def test_the_symbolizer_resolves_and_the_presenting_side_links() -> None:
    """The Symbolizer's chains carry no links; ``links_for`` its banner (or a ``kernel_tag``) gives the
    links a command shows, on the Debian 6.1 vmlinux whose banner names Debian 6.1.187."""
    from anchors import require_test_vmlinux

    from ksym import Symbolizer
    from ksym.links import links_for
    from ksym.version import choose_tag

    with Symbolizer(require_test_vmlinux(), use_index=False) as sym:
        res = sym.resolve("__ip_local_out+222")[0]
        banner = sym.banner
    assert not hasattr(sym, "links") and not hasattr(sym, "tag_guess")
    assert res.chain and all(loc.url is None and loc.ident_url is None for loc in res.chain)
    linked = links_for(banner).resolution(res)
    assert [(loc.function, loc.file, loc.line) for loc in linked.chain] == [
        (loc.function, loc.file, loc.line) for loc in res.chain]
    assert linked.chain[0].url == "https://elixir.bootlin.com/linux/v6.1.187/source/include/linux/netfilter.h#L257"
    assert linked.chain[-1].ident_url == "https://elixir.bootlin.com/linux/v6.1.187/A/ident/__ip_local_out"
    assert links_for(banner).tag == choose_tag(banner).tag == "v6.1.187"
    mine = links_for(banner, kernel_tag="6.1.1", elixir_url="http://127.0.0.1:8080/")
    assert mine.location(res.chain[0]).url == (
        "http://127.0.0.1:8080/linux/v6.1.1/source/include/linux/netfilter.h#L257")
    assert links_for(None).tag == "latest"
    with pytest.raises(ValueError):
        links_for(banner, elixir_url="ftp://elixir.example.test")
