"""The DB path goes into an SQLite URI: characters URIs treat specially must survive."""

from pathlib import Path

import pytest

from minipipe_svc.store import Store


@pytest.mark.parametrize("name", ["with space", "what?", "hash#tag", "100%", "a%20b", "ünï"])
def test_odd_characters_in_the_db_path(tmp_path: Path, name: str) -> None:
    path = tmp_path / name / "state.db"
    with Store.open(str(path)) as store:
        assert store.counts()["PENDING"] == 0
    assert path.exists()
    assert sorted(p.name for p in path.parent.iterdir() if p.suffix == ".db") == ["state.db"]
    with Store.open(str(path), readonly=True) as store:
        assert store.counts()["PENDING"] == 0
