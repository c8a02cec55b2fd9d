"""Which command lines the click-free submit path takes (everything else goes to click)."""

import pytest

from minipipe_svc.entry import plain_submit


@pytest.mark.parametrize(("argv", "expected"), [
    (["submit", "p.toml"], (None, False, "p.toml")),
    (["submit", "--json", "p.toml"], (None, True, "p.toml")),
    (["submit", "p.toml", "--json"], (None, True, "p.toml")),
    (["--config", "c.json", "submit", "p.toml"], ("c.json", False, "p.toml")),
    (["--config=c.json", "submit", "--json", "p.toml"], ("c.json", True, "p.toml")),
])
def test_plain_submits_take_the_fast_path(argv: list[str], expected: tuple) -> None:
    assert plain_submit(argv) == expected


@pytest.mark.parametrize("argv", [
    [], ["ls"], ["submit"], ["submit", "-"], ["submit", "--help"], ["submit", "a", "b"],
    ["submit", "--priority", "5", "p.toml"], ["submit", "--json", "--json", "p.toml"],
    ["submit", "--format=json", "p.toml"], ["--config"], ["--config", "submit", "p.toml"],
    ["--config=", "submit", "p.toml"], ["--version"], ["submit", "-h", "p.toml"],
])
def test_everything_else_goes_to_click(argv: list[str]) -> None:
    assert plain_submit(argv) is None
