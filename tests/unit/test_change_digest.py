"""The digest landing compares, and the line counts read from the same diff: hunk
headers count up to their second "@@" only, however the stream is cut into chunks."""

from __future__ import annotations

import hashlib

from minipipe_svc.workspace import _Digest

DIFF = (b"diff --git a/x.py b/x.py\nindex 1..2 100644\n--- a/x.py\n+++ b/x.py\n"
        b"@@ -1,3 +1,3 @@ def main():\n-a\n+b\n@@ -9 +9 @@\n+@@ -1 +1 @@ content\n")
PLAIN = DIFF.replace(b" @@ def main():\n", b" @@\n")


def digest(chunks: list[bytes], hunks: bool = True) -> str:
    reader = _Digest(hunks)
    for chunk in chunks:
        reader.update(chunk)
    return reader.hexdigest()


def test_function_names_in_hunk_headers_do_not_count() -> None:
    assert digest([DIFF]) == hashlib.sha256(PLAIN).hexdigest()
    # A "+" line that looks like a header is content: it counts whole.
    assert b"+@@ -1 +1 @@ content\n" in PLAIN


def test_any_chunking_gives_the_same_digest() -> None:
    whole = digest([DIFF])
    for size in (1, 2, 3, 7, 16, 64):
        assert digest([DIFF[i:i + size] for i in range(0, len(DIFF), size)]) == whole


def test_long_lines_are_hashed_as_they_come() -> None:
    line = b"+" + b"x" * 100_000 + b"\n"
    data = line + b"@@ -1 +1 @@ f\n" + line[:-1]  # the last line has no end
    expected = hashlib.sha256(line + b"@@ -1 +1 @@\n" + line[:-1]).hexdigest()
    reader = _Digest(diff=True)
    for i in range(0, len(data), 5000):
        reader.update(data[i:i + 5000])
        assert len(reader.pending) <= 5000 + _Digest.LONGEST_HEADER
    assert reader.hexdigest() == expected


def test_other_streams_are_hashed_as_they_are() -> None:
    assert digest([DIFF], hunks=False) == hashlib.sha256(DIFF).hexdigest()


def test_lines_are_counted_per_file_from_the_hunks_only() -> None:
    second = (b"diff --git a/y b/y\nnew file mode 100644\nindex 0..3\n--- /dev/null\n"
              b"+++ b/y\n@@ -0,0 +1,2 @@\n+--- not a header\n+-\n"
              b"diff --git a/e b/e\nnew file mode 100644\nindex 0..e\n")
    reader = _Digest(diff=True)
    for i in range(0, len(DIFF + second), 3):
        reader.update((DIFF + second)[i:i + 3])
    reader.hexdigest()
    # x.py: -a +b and a "+" line that looks like a header; y: two; e: empty, no hunk
    assert reader.counts == [[2, 1], [2, 0], [0, 0]]
