"""The decoded-image cache: built once per machine, shared by processes, never stale or half-written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpo.data import cache
from hpo.data.formats import load_table
from hpo.data.table import resize_image
from hpo.errors import DataError


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty cache folder, and no array left open from earlier tests."""
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV_CACHE, str(root))
    monkeypatch.setattr(cache, "_opened", {})
    return root


@pytest.fixture
def data_copy(image_root, tmp_path) -> Path:
    copy = tmp_path / "images"
    shutil.copytree(image_root, copy)
    return copy


def counting_reads(table):
    """Wrap table.read to count how many images were decoded."""
    reads = []
    original = table.read
    table.read = lambda i: (reads.append(i), original(i))[1]
    return reads


def test_built_once_then_memory_mapped(fresh_cache, image_root):
    table = load_table("imagefolder", {"root": str(image_root)})
    reads = counting_reads(table)
    images = cache.decoded(table, 12)
    assert images.shape == (len(table), 12, 12, 3) and images.dtype == np.uint8
    assert len(reads) == len(table)
    path = cache.cache_path(table, 12)
    assert path.parent == fresh_cache / "decoded" and path.is_file()
    assert not list(path.parent.glob("*.partial"))
    # Pixels are exactly what prediction's preprocessing gives.
    assert np.array_equal(images[7], resize_image(table.read(7), 12))

    # Another process (here: the same process after forgetting its open arrays) maps the file.
    cache._opened.clear()
    again = load_table("imagefolder", {"root": str(image_root)})
    reads_again = counting_reads(again)
    mapped = cache.decoded(again, 12)
    assert reads_again == [] and isinstance(mapped, np.memmap)
    assert np.array_equal(mapped, images)
    assert not mapped.flags.writeable  # trials cannot change the shared pixels


def test_one_file_per_size_and_crop(fresh_cache, image_root):
    table = load_table("imagefolder", {"root": str(image_root)})
    paths = {cache.cache_path(table, 12), cache.cache_path(table, 16), cache.cache_path(table, 12, (8, 8))}
    assert len(paths) == 3
    for size, crop in ((12, None), (16, None), (12, (8, 8))):
        cache.decoded(table, size, crop)
    assert sorted(p.name for p in (fresh_cache / "decoded").glob("*.npy")) == sorted(p.name for p in paths)


def test_changed_file_is_decoded_again(fresh_cache, data_copy):
    table = load_table("imagefolder", {"root": str(data_copy)})
    before, old_path = cache.decoded(table, 12), cache.cache_path(table, 12)
    # Same size on disk, different pixels: only the modification time tells.
    target = data_copy / "c0_red" / "00.png"
    inverted = 255 - np.asarray(Image.open(target))
    Image.fromarray(inverted).save(target)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = load_table("imagefolder", {"root": str(data_copy)})
    assert cache.cache_path(changed, 12) != old_path
    after = cache.decoded(changed, 12)
    index = [str(p).endswith("c0_red/00.png") for p in changed.files].index(True)
    assert not np.array_equal(after[index], before[index])
    assert np.array_equal(after[index], resize_image(inverted, 12))


def test_partial_or_stray_file_is_not_trusted(fresh_cache, image_root):
    table = load_table("imagefolder", {"root": str(image_root)})
    path = cache.cache_path(table, 12)
    path.parent.mkdir(parents=True)
    np.save(path, np.zeros((3, 12, 12, 3), dtype=np.uint8))  # wrong shape: e.g. an older build
    images = cache.decoded(table, 12)
    assert images.shape == (len(table), 12, 12, 3)
    assert all(np.array_equal(images[i], resize_image(table.read(i), 12)) for i in range(len(table)))


def test_cache_off_decodes_in_memory(fresh_cache, image_root, monkeypatch):
    monkeypatch.setenv(cache.ENV_CACHE, "off")
    table = load_table("imagefolder", {"root": str(image_root)})
    images = cache.decoded(table, 12)
    assert not isinstance(images, np.memmap) and images.shape == (len(table), 12, 12, 3)
    assert not fresh_cache.exists()


def test_unwritable_cache_is_one_clear_error(fresh_cache, image_root, monkeypatch):
    blocker = fresh_cache.parent / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(cache.ENV_CACHE, str(blocker))
    table = load_table("imagefolder", {"root": str(image_root)})
    with pytest.raises(DataError, match=r"cannot write the decoded-image cache .*HPO_CACHE=off to decode in memory") as info:
        cache.decoded(table, 12)
    # It names the real problem, not a full disk.
    assert f"HPO_CACHE={blocker}: that is a file, not a folder" in str(info.value) and "disk" not in str(info.value)


def test_no_lock_file_is_left_after_a_build_or_a_failed_one(fresh_cache, data_copy):
    table = load_table("imagefolder", {"root": str(data_copy)})
    cache.decoded(table, 12)
    (data_copy / "c1_green" / "03.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read"):
        cache.decoded(load_table("imagefolder", {"root": str(data_copy)}), 12)
    assert sorted(p.suffix for p in (fresh_cache / "decoded").iterdir()) == [".npy"]  # the built one alone


def test_corrupt_image_names_the_file_and_leaves_nothing(fresh_cache, data_copy):
    (data_copy / "c1_green" / "03.png").write_bytes(b"not a png")
    table = load_table("imagefolder", {"root": str(data_copy)})
    with pytest.raises(DataError, match=r"cannot read .*c1_green/03.png"):
        cache.decoded(table, 12)
    assert not list((fresh_cache / "decoded").glob("*.npy*"))


BUILD = """
import sys, time
from hpo.data import cache
from hpo.data.formats import load_table
table = load_table("imagefolder", {"root": sys.argv[1]})
original, reads = table.read, []
table.read = lambda i: (reads.append(i), time.sleep(0.01), original(i))[2]  # slow: builds overlap
images = cache.decoded(table, 20)
print(len(reads), int(images.sum()))
"""


def test_concurrent_processes_build_once(fresh_cache, image_root):
    """Workers starting together: one builds, the others wait on the lock and map its file."""
    env = {**os.environ, cache.ENV_CACHE: str(fresh_cache)}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(image_root)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    reads = sorted(int(out.split()[0]) for out, _ in outputs)
    assert reads == [0, 0, 120]  # one process decoded every image; the others mapped its file
    assert len({out.split()[1] for out, _ in outputs}) == 1  # every process sees the same pixels
    assert len(list((fresh_cache / "decoded").glob("*.npy"))) == 1


def test_mask_verification_is_remembered(fresh_cache, mask_archive, monkeypatch):
    from hpo.data.formats import mask

    checked = []
    original = mask._is_corrupt
    monkeypatch.setattr(mask, "_is_corrupt", lambda path: (checked.append(path), original(path))[1])
    first = load_table("mask", {"root": str(mask_archive.root), "corrupt": "skip"})
    assert len(checked) == len(first) + first.skipped["corrupt"]
    checked.clear()
    second = load_table("mask", {"root": str(mask_archive.root), "corrupt": "skip"})
    assert checked == []  # no photo opened again
    assert second.fingerprint() == first.fingerprint() and second.skipped == first.skipped
    assert len(list((fresh_cache / "checks").glob("mask-verify-*.json"))) == 1
