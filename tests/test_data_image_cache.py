"""Image cache: resize/crop, reuse, rebuild on content or size change, atomic builds, bad images."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
from conftest import write_jpeg
from PIL import Image

from cliptune.data import DataWarning, image_cache
from cliptune.data.image_cache import default_cache_dir, load_or_build
from cliptune.data.preprocess import decode_image


def _bmp(path, colour, size=(30, 20)):
    Image.new("RGB", size, colour).save(path, format="BMP")


def _dataset(folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"{i}.bmp" for i in range(n)]
    for i, name in enumerate(names):
        _bmp(folder / name, (40 * i, 100, 200))
    return names


def _bomb_png(path, width=20000, height=20000):
    """A PNG header declaring 400 million pixels (no pixel data needed to trip the check)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + header))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + end)


def test_shorter_side_resize_then_center_crop(tmp_path):
    stripes = np.zeros((30, 90, 3), np.uint8)
    stripes[:, :30] = (255, 0, 0)
    stripes[:, 30:60] = (0, 255, 0)
    stripes[:, 60:] = (0, 0, 255)
    Image.fromarray(stripes).save(tmp_path / "wide.png")
    Image.fromarray(stripes.transpose(1, 0, 2).copy()).save(tmp_path / "tall.png")
    for name in ("wide.png", "tall.png"):
        pixels = decode_image(tmp_path / name, 16)
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
        assert (pixels[..., 1] > 200).all() and (pixels[..., [0, 2]] < 60).all()  # the middle third


def test_build_then_reuse(tmp_path):
    names = _dataset(tmp_path / "data")
    built = load_or_build(tmp_path / "data", names, 8, tmp_path / "cache", slot="t")
    assert not built.reused and built.valid.all()
    assert built.images.shape == (4, 8, 8, 3) and built.images.dtype == np.uint8
    assert isinstance(built.images, np.memmap)
    np.testing.assert_array_equal(built.images[2], decode_image(tmp_path / "data" / "2.bmp", 8))
    stamp = built.path.stat().st_mtime_ns
    again = load_or_build(tmp_path / "data", names, 8, tmp_path / "cache", slot="t")
    assert again.reused and again.path == built.path and again.path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(built.images))


def test_rebuilt_when_content_changes_with_same_size_and_mtime(tmp_path):
    names = _dataset(tmp_path / "data")
    first = load_or_build(tmp_path / "data", names, 8, tmp_path / "cache", slot="t")
    target = tmp_path / "data" / "1.bmp"
    stat = target.stat()
    _bmp(target, (255, 255, 0))  # same dimensions, so the same number of bytes
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    second = load_or_build(tmp_path / "data", names, 8, tmp_path / "cache", slot="t")
    assert not second.reused and second.path != first.path
    assert tuple(second.images[1, 4, 4]) == (255, 255, 0)
    assert not first.path.exists()  # the stale version is gone


def test_a_new_size_is_a_new_cache(tmp_path):
    names = _dataset(tmp_path / "data")
    small = load_or_build(tmp_path / "data", names, 8, tmp_path / "cache", slot="t")
    large = load_or_build(tmp_path / "data", names, 12, tmp_path / "cache", slot="t")
    assert not large.reused and large.images.shape == (4, 12, 12, 3)
    assert small.path.exists() and load_or_build(tmp_path / "data", names, 8,
                                                 tmp_path / "cache", slot="t").reused


def test_interrupted_build_is_never_reused(tmp_path, monkeypatch):
    names = _dataset(tmp_path / "data")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(image_cache, "_decode_chunk", crash)
    with pytest.raises(KeyboardInterrupt):
        load_or_build(tmp_path / "data", names, 8, tmp_path / "cache", slot="t")
    assert not list((tmp_path / "cache").rglob("*.npy"))
    monkeypatch.undo()
    rebuilt = load_or_build(tmp_path / "data", names, 8, tmp_path / "cache", slot="t")
    assert not rebuilt.reused and rebuilt.valid.all()


def test_a_killed_builds_temporary_file_is_removed_by_the_next_build(tmp_path):
    names = _dataset(tmp_path / "data")
    built = load_or_build(tmp_path / "data", names, 8, tmp_path / "cache", slot="t")
    leftover = built.path.with_name(f".{built.path.stem}.k1ll3d.tmp.npy")  # SIGKILL mid-build
    leftover.write_bytes(b"\0" * 64)
    built.path.unlink()
    rebuilt = load_or_build(tmp_path / "data", names, 8, tmp_path / "cache", slot="t")
    assert not rebuilt.reused and not leftover.exists()
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert rebuilt.path.stat().st_mode == plain.stat().st_mode  # readable as a plain write


def test_corrupt_truncated_and_oversized_images_are_skipped_with_a_count(tmp_path):
    folder = tmp_path / "data"
    names = _dataset(folder, 3)
    (folder / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    write_jpeg(folder / "full.jpg", size=(200, 150))
    (folder / "truncated.jpg").write_bytes((folder / "full.jpg").read_bytes()[:600])
    _bomb_png(folder / "bomb.png")
    names += ["corrupt.jpg", "truncated.jpg", "bomb.png", "gone.jpg"]
    with pytest.warns(DataWarning, match="skipped 4 of 7 images that could not be read") as record:
        cache = load_or_build(folder, names, 8, tmp_path / "cache", slot="t")
    message = str(record[0].message)
    assert "too large" in message and "unreadable" in message
    assert cache.valid.tolist() == [True, True, True, False, False, False, False]
    assert not cache.images[3:].any()
    with pytest.warns(DataWarning, match="skipped 4 of 7"):  # reported again on reuse
        assert load_or_build(folder, names, 8, tmp_path / "cache", slot="t").reused


def test_process_pool_gives_the_same_pixels(tmp_path):
    folder = tmp_path / "data"
    names = [f"{i:03d}.jpg" for i in range(image_cache.SERIAL_BELOW + 6)]
    for i, name in enumerate(names):
        write_jpeg(folder / name, size=(40, 30), seed=i)
    pooled = load_or_build(folder, names, 8, tmp_path / "pool", slot="t", workers=2)
    serial = load_or_build(folder, names, 8, tmp_path / "serial", slot="t", workers=1)
    np.testing.assert_array_equal(np.asarray(pooled.images), np.asarray(serial.images))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPTUNE_CACHE", str(tmp_path))
    assert default_cache_dir(None) == tmp_path
    assert default_cache_dir("/x/y") == tmp_path.__class__("/x/y")
    monkeypatch.delenv("CLIPTUNE_CACHE")
    assert default_cache_dir(None) == tmp_path.__class__("~/.cache/cliptune").expanduser()


def _build_when_released(barrier, folder, names, cache_dir, out) -> None:
    """Child process: wait for the other builder, then both ask for the same cache at once."""
    barrier.wait()
    cache = load_or_build(folder, names, 224, cache_dir, slot="t", workers=1)
    np.save(out, np.array([cache.reused, cache.path.stat().st_ino, int(cache.images.sum())]))


def test_two_processes_building_the_same_cache_at_once_build_it_once(tmp_path, capfd):
    import multiprocessing

    folder, rng = tmp_path / "data", np.random.default_rng(0)
    folder.mkdir()
    names = [f"{i:03d}.bmp" for i in range(96)]  # about half a second to build
    for name in names:
        Image.fromarray(rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)).save(folder / name)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    outs = [tmp_path / f"builder{i}.npy" for i in (0, 1)]
    builders = [context.Process(target=_build_when_released,
                                args=(barrier, folder, names, tmp_path / "cache", out))
                for out in outs]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join(timeout=120)
        assert builder.exitcode == 0
    results = [np.load(out) for out in outs]
    assert sorted(bool(r[0]) for r in results) == [False, True]  # one built, one reused
    assert results[0][1] == results[1][1] and results[0][2] == results[1][2]  # the same file
    assert capfd.readouterr().err.count("waiting for another process to finish building") == 1
    cache_files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(cache_files) == 3 and not any("partial" in name for name in cache_files)
