"""File identities: size and time, and the content checksum that catches in-place damage."""

from __future__ import annotations

import os

from fixtures import corrupt_in_place

from alexnet.pipeline.files import content_digest, file_identity, identity_problem


def test_same_size_same_time_corruption_is_caught_by_the_digest(tmp_path):
    path = tmp_path / "codes.bin"
    path.write_bytes(bytes(range(256)) * 100)
    recorded = file_identity(path, digest=True)
    assert identity_problem(path, recorded) is None
    corrupt_in_place(path, 1234)
    assert file_identity(path) == {k: v for k, v in recorded.items() if k != "xxh3"}
    assert "corrupted" in identity_problem(path, recorded)
    assert identity_problem(path, recorded, content=False) is None  # the cheap check misses it


def test_digest_reads_in_blocks(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(100_003))
    assert content_digest(path, block=4096) == content_digest(path)


def test_missing_and_resized_files_are_named(tmp_path):
    path = tmp_path / "index.faiss"
    path.write_bytes(b"x" * 10)
    recorded = file_identity(path)
    path.write_bytes(b"x" * 11)
    assert "has changed" in identity_problem(path, recorded)
    path.unlink()
    assert identity_problem(path, recorded) == f"{path} is missing"
