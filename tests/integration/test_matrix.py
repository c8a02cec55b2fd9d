"""Matrix runs: a plan's [matrix] submits one run per combination, one group, at most
--max-parallel at once, and `wait` waits for all of it, through a private daemon."""

from __future__ import annotations

import json
from itertools import combinations

from .conftest import Instance

MATRIX = """
name = "test"
[matrix]
python = ["3.11", "3.12"]
db = ["pg", "sqlite", "mysql"]
[[steps]]
id = "test"
run = '''
start=$(date +%s.%N)
sleep 0.3
echo "$MINIPIPE_MATRIX_PYTHON $MINIPIPE_MATRIX_DB $start $(date +%s.%N)" \\
    > {root}/combo-$MINIPIPE_RUN_ID
test "$MINIPIPE_MATRIX_DB" != "{fail}"
'''
"""


def test_a_matrix_of_six_runs_as_one_group(running: Instance) -> None:
    instance = running
    plan = instance.plan("matrix", MATRIX.format(root=instance.root, fail="none"))
    submitted = instance.cli("submit", plan, "--max-parallel", "2")
    ids = [int(line) for line in submitted.stdout.split()]
    assert len(ids) == 6 and ids == list(range(ids[0], ids[0] + 6))
    assert f"group {ids[0]}: 6 runs" in submitted.stderr
    listed = {r["id"]: r for r in json.loads(instance.cli("ls", "--json").stdout)}
    assert {listed[i]["group"] for i in ids} == {ids[0]}
    assert listed[ids[0]]["name"] == "test[python=3.11,db=pg]"
    assert "GROUP" in instance.cli("ls").stdout
    waited = instance.cli("wait", *map(str, ids))
    assert waited.stderr.count("SUCCEEDED") == 6
    held = []
    for run_id in ids:
        python, db, start, end = (instance.root / f"combo-{run_id}").read_text().split()
        held.append(((python, db), float(start), float(end)))
    assert sorted(combo for combo, _, _ in held) == sorted(
        (p, d) for p in ("3.11", "3.12") for d in ("pg", "sqlite", "mysql"))
    for _, start, _ in held:  # --max-parallel 2: never three at once
        assert sum(1 for _, s, e in held if s <= start < e) <= 2, held
    assert any(a[1] < b[2] and b[1] < a[2] for a, b in combinations(held, 2)), \
        "two of them ran at once"


def test_wait_for_a_group_fails_when_one_combination_fails(running: Instance) -> None:
    instance = running
    plan = instance.plan("matrix", MATRIX.format(root=instance.root, fail="sqlite"))
    ids = [int(line) for line in instance.cli("submit", plan).stdout.split()]
    result = instance.cli("wait", "--group", str(ids[0]), check=False)
    assert result.returncode == 1
    assert result.stderr.count("FAILED") == 2 and result.stderr.count("SUCCEEDED") == 4
    bad = instance.plan("bad", '[matrix]\nx = []\n[[steps]]\nid = "a"\nrun = "true"\n')
    result = instance.cli("submit", bad, check=False)
    assert result.returncode == 2 and f"{bad}:2:" in result.stderr


def test_runs_that_cannot_start_yet_do_not_hide_the_runs_behind_them(running: Instance
                                                                       ) -> None:
    """Two matrices of 256, one run at a time each: 510 runs wait, ahead of a plain run
    in queue order. The plain run starts at once (the queue is not read 256 deep)."""
    instance = running
    values = ", ".join(f'"{n}"' for n in range(16))
    matrix = instance.plan("wide", f"[matrix]\nx = [{values}]\ny = [{values}]\n"
                           f'[[steps]]\nid = "hold"\nrun = "{instance.gated()}"\n')
    for _ in range(2):
        instance.cli("submit", matrix, "--max-parallel", "1")
    plain = instance.submit('[[steps]]\nid = "a"\nrun = "true"\n', name="plain")
    assert instance.wait_state(plain, "SUCCEEDED", "FAILED", timeout=30)["state"] == \
        "SUCCEEDED"
    running_now = json.loads(instance.cli("ls", "--json", "--state", "RUNNING").stdout)
    assert len(running_now) == 2, running_now  # one of each matrix, still held
    instance.stop_daemon()  # (runners outlive it: let these two end, start no more)
    instance.open_gate()
    for run in running_now:
        instance.wait_state(run["id"], "SUCCEEDED")
