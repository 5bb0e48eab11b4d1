"""The image's Python packages: deploy/requirements.txt pins exactly pyproject's
dependencies, with hashes, at the versions .venv runs; the Dockerfile installs
from it offline with hash checking (scripts/wheelhouse.py fills the wheelhouse)."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("wheelhouse", ROOT / "scripts" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(_spec)
sys.modules["wheelhouse"] = wheelhouse
_spec.loader.exec_module(wheelhouse)

from packaging.requirements import Requirement  # noqa: E402

HASH = "a" * 64


def test_lock_pins_every_pyproject_dependency_with_a_hash():
    pins = wheelhouse.parse_lock(wheelhouse.LOCK.read_text())
    wheelhouse.check(pins, wheelhouse.project_requirements())
    assert pins and all(p.hashes for p in pins)


def test_venv_runs_the_pinned_versions():
    """make deps installs the lock first, so make run and the tests run what the image runs."""
    for pin in wheelhouse.parse_lock(wheelhouse.LOCK.read_text()):
        assert importlib.metadata.version(pin.name) == pin.version, (
            f"{pin.name}: .venv has {importlib.metadata.version(pin.name)}, the image {pin.version}: "
            "run make deps")


def test_parse_lock_reads_continuations_and_several_hashes():
    text = f"# comment\nbencode.py==4.1.0 \\\n    --hash=sha256:{HASH} \\\n    --hash=sha256:{'b' * 64}\n"
    (pin,) = wheelhouse.parse_lock(text)
    assert (pin.name, pin.version, pin.hashes) == ("bencode.py", "4.1.0", (HASH, "b" * 64))
    assert pin.key == "bencode-py"


@pytest.mark.parametrize("text, message", [
    ("bencode.py>=4.0 --hash=sha256:" + HASH, "is not NAME==VERSION"),
    ("bencode.py==4.1.0", "has no --hash"),
    ("bencode.py==4.1.0 --hash=md5:abc", "is not --hash=sha256"),
    ("bencode.py==4.1.0 --hash=sha256:abc", "is not --hash=sha256"),
])
def test_parse_lock_refuses_unpinned_or_unhashed_lines(text, message):
    with pytest.raises(wheelhouse.LockError, match=message):
        wheelhouse.parse_lock(text)


def test_check_refuses_drift_from_pyproject():
    pins = wheelhouse.parse_lock(f"bencode.py==4.1.0 --hash=sha256:{HASH}\n")
    wheelhouse.check(pins, [Requirement("bencode.py>=4.0")])
    with pytest.raises(wheelhouse.LockError, match="outside pyproject"):
        wheelhouse.check(pins, [Requirement("bencode.py>=5")])
    with pytest.raises(wheelhouse.LockError, match="depends on"):
        wheelhouse.check(pins, [Requirement("bencode.py>=4.0"), Requirement("redis>=4")])
    with pytest.raises(wheelhouse.LockError, match="depends on"):
        wheelhouse.check(pins, [])
    twice = wheelhouse.parse_lock(f"bencode.py==4.1.0 --hash=sha256:{HASH}\nBencode-py==4.0.0 "
                                  f"--hash=sha256:{HASH}\n")
    with pytest.raises(wheelhouse.LockError, match="pinned twice"):
        wheelhouse.check(twice, [Requirement("bencode.py")])


def test_wheel_matching_needs_name_version_and_hash(tmp_path):
    data = b"not really a wheel"
    import hashlib
    digest = hashlib.sha256(data).hexdigest()
    pin = wheelhouse.Pin("bencode.py", "4.1.0", (digest,))
    good = tmp_path / "bencode_py-4.1.0-py3-none-any.whl"
    good.write_bytes(data)
    assert wheelhouse.wheel_matches(good, pin)
    assert wheelhouse.missing_wheels([pin], tmp_path) == []
    good.write_bytes(data + b"tampered")
    assert not wheelhouse.wheel_matches(good, pin)
    assert wheelhouse.missing_wheels([pin], tmp_path) == [pin]
    other = tmp_path / "bencode_py-4.0.0-py3-none-any.whl"
    other.write_bytes(data)
    assert not wheelhouse.wheel_matches(other, pin)


def test_dockerfile_installs_offline_from_the_lock_with_hashes():
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    installs = [line for line in text.splitlines() if "pip3 install" in line]
    assert len(installs) == 1, installs
    line = installs[0]
    for flag in ("--no-index", "--require-hashes", "--find-links /tmp/wheelhouse", "-r /tmp/requirements.txt",
                 "--only-binary=:all:", "--no-deps"):
        assert flag in line, f"pip install without {flag}: {line}"
    assert "COPY deploy/requirements.txt /tmp/requirements.txt" in text
    assert "COPY deploy/wheelhouse/ /tmp/wheelhouse/" in text
    # The wheelhouse folder exists in every clone (COPY fails on a missing source).
    assert (ROOT / "deploy" / "wheelhouse" / "README.md").is_file()
    assert "*.whl" in (ROOT / "deploy" / "wheelhouse" / ".gitignore").read_text().split()
