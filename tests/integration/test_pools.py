"""Pools: config `pools = {"gpu": 2}`, a run in a pool (`pool = "gpu"`, `--pool gpu`)
starts only while one of its slots is free, and its steps get a slot number unique
among the pool's running runs (MINIPIPE_SLOT), through a private daemon."""

from __future__ import annotations

import json
from itertools import combinations

from .conftest import Instance, wait_for

# Each step notes its slot and when it held it (monotonic enough: one machine's clock).
SLOTTED = """
pool = "gpu"
[[steps]]
id = "work"
run = '''
start=$(date +%s.%N)
sleep 0.4
echo "$MINIPIPE_POOL $MINIPIPE_SLOT $start $(date +%s.%N)" > {root}/slot-$MINIPIPE_RUN_ID
'''
"""


def test_a_pool_caps_its_runs_and_gives_each_a_unique_slot(instance: Instance) -> None:
    instance.write_config(max_concurrent_runs=4, pools={"gpu": 2, "io": 1})
    instance.start_daemon()
    instance.cli("pause")
    pooled = [instance.submit(SLOTTED.format(root=instance.root), name=f"gpu-{n}")
              for n in range(8)]
    plain = instance.submit('[[steps]]\nid = "a"\nrun = "sleep 0.4"\n', name="plain")
    by_option = instance.submit('[[steps]]\nid = "a"\nrun = "echo $MINIPIPE_SLOT > '
                                f'{instance.root}/io-slot"\n', "--pool", "io", name="io")
    instance.cli("resume")
    wait_for(lambda: json.loads(instance.cli("status", "--json").stdout)["pools"]["gpu"]
             ["running"] == 2, 30, "two runs in pool gpu")
    status = instance.cli("status").stdout
    assert "pool gpu: 2/2 slots in use" in status
    for run_id in (*pooled, plain, by_option):
        assert instance.wait_state(run_id, "SUCCEEDED", "FAILED", timeout=60)["state"] == \
            "SUCCEEDED"
    held = []
    for run_id in pooled:
        pool, slot, start, end = (instance.root / f"slot-{run_id}").read_text().split()
        assert pool == "gpu" and slot in ("0", "1")
        held.append((int(slot), float(start), float(end)))
    # Never more than two at once, and never two at once on one slot.
    for (slot_a, start_a, end_a), (slot_b, start_b, end_b) in combinations(held, 2):
        if start_a < end_b and start_b < end_a:
            assert slot_a != slot_b, held
    for _, start, _ in held:
        assert sum(1 for _, s, e in held if s <= start < e) <= 2, held
    assert (instance.root / "io-slot").read_text().strip() == "0"
    shown = instance.run(pooled[0])
    assert shown["pool"] == "gpu" and shown["slot"] is None  # ended: holds no slot


def test_an_unknown_pool_is_refused_at_submit(instance: Instance) -> None:
    instance.write_config(pools={"gpu": 1})
    instance.start_daemon()
    plan = instance.plan("p", '[[steps]]\nid = "a"\nrun = "true"\n')
    result = instance.cli("submit", plan, "--pool", "tpu", check=False)
    assert result.returncode != 0
    assert "there is no pool 'tpu' in the config (pools: gpu)" in result.stderr
    bad = instance.plan("bad", 'pool = "no spaces"\n[[steps]]\nid = "a"\nrun = "true"\n')
    result = instance.cli("submit", bad, check=False)
    assert result.returncode == 2 and f"{bad}:1:" in result.stderr
    assert json.loads(instance.cli("ls", "--json").stdout) == []
