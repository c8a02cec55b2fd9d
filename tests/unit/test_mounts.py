"""Which filesystems a lookup of a path passes through, read from mountinfo text (pure).

The daemon stats a cwd in its own loop only when every mount on the way is local;
these are the rules that decide it, fed the kernel's text. That the walk itself
keeps to those mounts is proven against real mounts in tests/integration.
"""

from pathlib import Path

from minipipe_svc.procs import Mount, MountTable, MountTree, parse_mountinfo

ROOT = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda1 rw"
HOME = "30 22 254:1 / /home rw,relatime shared:5 - ext4 /dev/vda2 rw"


def chain(text: str, path: str) -> list[str] | None:
    mounts = parse_mountinfo(text)
    assert mounts is not None
    found = MountTree(mounts).chain(path)
    return None if found is None else [m.fstype + ":" + m.point for m in found]


def test_fields_are_read_after_a_variable_number_of_optional_ones() -> None:
    text = "\n".join([ROOT, "41 22 0:39 / /mnt/data rw - fuse.sshfs alice@host: rw,user_id=0",
                      "42 22 0:40 /sub /srv rw master:3 propagate_from:2 - nfs4 h:/x rw"])
    assert parse_mountinfo(text) == [Mount(22, 1, "/", "ext4"),
                                     Mount(41, 22, "/mnt/data", "fuse.sshfs"),
                                     Mount(42, 22, "/srv", "nfs4")]


def test_escaped_characters_in_mount_points_are_unescaped() -> None:
    text = ROOT + "\n50 22 0:41 / /mnt/my\\040disk\\011tab\\134x rw - vfat /dev/sdb1 rw"
    mounts = parse_mountinfo(text)
    assert mounts is not None and mounts[1].point == "/mnt/my disk\ttab\\x"
    assert chain(text, "/mnt/my disk\ttab\\x/photos") == ["ext4:/", "vfat:/mnt/my disk\ttab\\x"]


def test_a_line_that_is_not_understood_makes_the_whole_table_unusable() -> None:
    assert parse_mountinfo(ROOT + "\nsomething else entirely") is None
    assert parse_mountinfo(ROOT + "\n23 22 0:5 / /x rw no-separator ext4") is None


def test_only_kernel_backed_local_filesystems_count_as_local() -> None:
    for fstype in ("ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "vfat"):
        assert Mount(1, 1, "/", fstype).local, fstype
    for fstype in ("fuse.sshfs", "fuseblk", "fuse", "nfs", "nfs4", "cifs", "smb3", "9p",
                   "ceph", "autofs", "proc", "something-new"):
        assert not Mount(1, 1, "/", fstype).local, fstype


def test_the_chain_follows_mount_points_by_whole_components() -> None:
    text = ROOT + "\n" + HOME
    assert chain(text, "/home/alice/project") == ["ext4:/", "ext4:/home"]
    assert chain(text, "/home") == ["ext4:/", "ext4:/home"]
    assert chain(text, "/home2/alice") == ["ext4:/"]
    assert chain(text, "/") == ["ext4:/"]


def test_a_fuse_mount_on_the_way_is_in_the_chain() -> None:
    text = "\n".join([ROOT, HOME, "60 30 0:50 / /home/alice/remote rw - fuse.sshfs s rw"])
    assert chain(text, "/home/alice/remote/src") == ["ext4:/", "ext4:/home",
                                                    "fuse.sshfs:/home/alice/remote"]
    assert chain(text, "/home/alice/remote2") == ["ext4:/", "ext4:/home"]


def test_a_mount_hidden_under_a_later_one_above_it_is_not_reached() -> None:
    """alice mounts FUSE on her home, over a tmpfs root made inside it: lookups of the
    tmpfs's path now go through FUSE. A longest-prefix match would say tmpfs."""
    text = "\n".join([ROOT, HOME, "61 30 0:51 / /home/alice/ramdisk rw - tmpfs t rw",
                      "62 30 0:52 / /home/alice rw - fuse.hang h rw"])
    assert chain(text, "/home/alice/ramdisk/x") == ["ext4:/", "ext4:/home",
                                                   "fuse.hang:/home/alice"]


def test_a_mount_stacked_on_another_is_reached_through_it() -> None:
    text = "\n".join([ROOT, HOME, "63 30 0:53 / /home rw - fuse.hang h rw",
                      "64 63 0:54 / /home/deeper rw - tmpfs t rw"])
    assert chain(text, "/home/deeper/x") == ["ext4:/", "ext4:/home", "fuse.hang:/home",
                                            "tmpfs:/home/deeper"]


def test_ambiguous_tables_answer_nothing() -> None:
    two_on_one_spot = "\n".join([ROOT, HOME, "65 22 0:55 / /home rw - tmpfs t rw"])
    assert chain(two_on_one_spot, "/home/x") is None
    assert chain(HOME, "/home/x") is None  # no root mount at all


def test_a_container_root_whose_parent_is_not_listed_is_the_root() -> None:
    text = "\n".join(["1290 1180 0:77 / / rw - overlay overlay rw,lowerdir=/a",
                      "1291 1290 0:78 / /proc rw - proc proc rw"])
    assert chain(text, "/work/x") == ["overlay:/"]
    assert chain(text, "/proc/self") == ["overlay:/", "proc:/proc"]


def test_a_mountinfo_file_other_than_procs_is_read_once(tmp_path: Path) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(ROOT + "\n" + HOME + "\n")
    table = MountTable(str(path))
    try:
        tree = table.tree()
        assert tree is not None and [m.point for m in tree.chain("/home/a") or []] == [
            "/", "/home"]
        assert not table.changed() and table.tree() is tree
    finally:
        table.close()
    path.write_text("not mountinfo\n")
    unreadable = MountTable(str(path))
    assert unreadable.tree() is None
    unreadable.close()
