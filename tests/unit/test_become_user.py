"""A forked runner's switch to run_user refuses root and names a missing user.

Both checks happen before any privilege changes, so they are safe to run here; the
switch itself is exercised for real in tests/system (steps print `id -un`).
"""

import pytest

from minipipe_svc.procs import become_user


def test_runs_never_execute_as_root() -> None:
    with pytest.raises(PermissionError, match="runs never execute as root"):
        become_user("root")


def test_a_missing_user_is_named_with_its_config_key() -> None:
    with pytest.raises(LookupError, match=r"there is no user 'no-such-user-here' \(config key "
                                          r"run_user\)"):
        become_user("no-such-user-here")
