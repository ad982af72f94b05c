"""File fingerprints used by stage skip keys and ONNX manifests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from models.hashing import sha256_file


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # more than one 1 MiB block
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
