"""Caption formats and local folders: detection, parsing quirks, bad caption files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import MALFORMED_IMAGE, MALFORMED_ROW, write_jpeg

from cliptune.data import DataWarning
from cliptune.data.folder import find_caption_file, load_folder
from cliptune.data.parsers import parse_captions_txt, parse_kaggle, parse_tsv
from cliptune.errors import DataError

NAMES = ["a.jpg", "b.jpg", "c.jpg"]


def _pairs():
    return [(name, f"caption {k} of {name}, with a comma") for name in NAMES for k in range(2)]


def _write_images(folder):
    for i, name in enumerate(NAMES):
        write_jpeg(folder / name, seed=i)


def _write_format(folder, fmt):
    pairs = _pairs()
    if fmt == "kaggle":
        lines = ["image_name| comment_number| comment"]
        lines += [f"{n}| {k % 2}| {c}" for k, (n, c) in enumerate(pairs)]
        (folder / "results.csv").write_text("\n".join(lines), encoding="utf-8")
    elif fmt == "captions_txt":
        lines = ["image,caption"] + [f"{n},{c}" for n, c in pairs]
        (folder / "captions.txt").write_text("\n".join(lines), encoding="utf-8")
    elif fmt == "tsv":
        lines = [f"{n}#{k % 2}\t{c}" for k, (n, c) in enumerate(pairs)]
        (folder / "Flickr8k.token.txt").write_text("\n".join(lines), encoding="utf-8")
    elif fmt == "coco":
        images = [{"id": 10 + i, "file_name": n} for i, n in enumerate(NAMES)]
        annotations = [
            {"id": k, "image_id": 10 + NAMES.index(n), "caption": c} for k, (n, c) in enumerate(pairs)
        ]
        text = json.dumps({"images": images, "annotations": annotations})
        (folder / "captions_val.json").write_text(text, encoding="utf-8")


@pytest.mark.parametrize("fmt", ["kaggle", "captions_txt", "tsv", "coco"])
def test_each_format_detected_and_read(tmp_path, fmt):
    _write_images(tmp_path / "images")
    _write_format(tmp_path, fmt)
    assert find_caption_file(tmp_path)[1] == fmt
    catalog = load_folder(tmp_path)
    assert catalog.root == tmp_path / "images"
    assert catalog.image_names == NAMES
    assert len(catalog.captions) == 6
    assert catalog.caption_image.tolist() == [0, 0, 1, 1, 2, 2]
    assert catalog.captions[0] == "caption 0 of a.jpg, with a comma"
    # Named explicitly, the same file is read.
    assert load_folder(tmp_path, fmt).captions == catalog.captions


def test_coco_layout_with_annotations_beside_the_image_folder(tmp_path):
    _write_images(tmp_path / "val2014")
    (tmp_path / "annotations").mkdir()
    _write_format(tmp_path / "annotations", "coco")
    catalog = load_folder(tmp_path)
    assert catalog.root == tmp_path / "val2014" and len(catalog.captions) == 6


def test_named_format_that_is_not_there(tmp_path):
    _write_images(tmp_path)
    _write_format(tmp_path, "tsv")
    with pytest.raises(DataError, match="no caption file in format 'coco'"):
        load_folder(tmp_path, "coco")


def test_kaggle_malformed_row_is_repaired_and_spaces_stripped(tmp_path):
    text = (
        "image_name| comment_number| comment\n"
        f"{MALFORMED_IMAGE}| 3| A dog plays .\n{MALFORMED_ROW}\n"
        "x.jpg| 0| caption | with a bar\n"
    )
    pairs = parse_kaggle(text, tmp_path / "results.csv")
    assert pairs == [
        (MALFORMED_IMAGE, "A dog plays ."),
        (MALFORMED_IMAGE, "A dog runs across the grass ."),
        ("x.jpg", "caption | with a bar"),
    ]


def test_captions_txt_splits_on_first_image_extension(tmp_path):
    text = 'image,caption\n1.jpg,A man, a dog .\n2.png,"A quoted, ""odd"" caption"\n'
    assert parse_captions_txt(text, tmp_path / "captions.txt") == [
        ("1.jpg", "A man, a dog ."),
        ("2.png", 'A quoted, "odd" caption'),
    ]


def test_unreadable_lines_and_empty_captions_are_skipped_with_counts(tmp_path):
    text = "a.jpg\tA cat .\nno tab here\nb.jpg\t   \nc.jpg\tA dog .\n"
    with pytest.warns(DataWarning) as record:
        pairs = parse_tsv(text, tmp_path / "t.tsv")
    assert pairs == [("a.jpg", "A cat ."), ("c.jpg", "A dog .")]
    messages = " ".join(str(w.message) for w in record)
    assert "skipped 1 of 4 lines that could not be read" in messages and "line 2" in messages
    assert "skipped 1 of 3 captions that are empty" in messages


def test_empty_caption_in_folder_drops_only_that_caption(tmp_path):
    _write_images(tmp_path)
    lines = ["image,caption", "a.jpg,A cat .", "a.jpg,", "b.jpg,A dog .", "c.jpg,A cow ."]
    (tmp_path / "captions.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.warns(DataWarning, match="1 of 4 captions that are empty"):
        catalog = load_folder(tmp_path)
    assert catalog.captions == ["A cat .", "A dog .", "A cow ."]


def test_non_utf8_byte_names_file_and_line(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "captions.txt").write_bytes(b"image,caption\na.jpg,A cat .\nb.jpg,caf\xe9 .\n")
    with pytest.raises(DataError, match=r"captions.txt: line 3 is not valid UTF-8 \(byte 0xe9\)"):
        load_folder(tmp_path)


def test_unknown_format(tmp_path):
    _write_images(tmp_path)
    (tmp_path / "labels.csv").write_text("id;label\n1;cat\n", encoding="utf-8")
    with pytest.raises(DataError, match="unknown caption format .*labels.csv"):
        load_folder(tmp_path)


def test_folder_without_caption_file(tmp_path):
    _write_images(tmp_path)
    with pytest.raises(DataError, match="no caption file in"):
        load_folder(tmp_path)
    with pytest.raises(DataError, match="data folder not found"):
        load_folder(tmp_path / "nowhere")


def test_missing_images_skipped_with_count(tmp_path):
    _write_images(tmp_path)
    _write_format(tmp_path, "captions_txt")
    (tmp_path / "b.jpg").unlink()
    with pytest.warns(DataWarning, match="skipped 1 of 3 images named in the captions but missing.*b.jpg"):
        catalog = load_folder(tmp_path)
    assert catalog.image_names == ["a.jpg", "c.jpg"]
    assert catalog.caption_image.tolist() == [0, 0, 1, 1]
    assert all("b.jpg" not in c for c in catalog.captions)
    for name in ("a.jpg", "c.jpg"):
        (tmp_path / name).unlink()
    with pytest.raises(DataError, match="none of the 3 images"):
        load_folder(tmp_path)


def test_bad_coco_json(tmp_path):
    (tmp_path / "captions.json").write_text('{"images": []}', encoding="utf-8")
    with pytest.raises(DataError, match="unknown caption format"):
        load_folder(tmp_path)
    with pytest.raises(DataError, match="not valid JSON"):
        (tmp_path / "captions.json").write_text("{", encoding="utf-8")
        from cliptune.data.parsers import read_caption_file

        read_caption_file(tmp_path / "captions.json", "coco")


def test_subset_reindexes_captions(tmp_path):
    _write_images(tmp_path)
    _write_format(tmp_path, "kaggle")
    catalog = load_folder(tmp_path).subset(np.array([0, 2]))
    assert catalog.image_names == ["a.jpg", "c.jpg"]
    assert catalog.caption_image.tolist() == [0, 0, 1, 1]
    assert catalog.captions[2].endswith("of c.jpg, with a comma")
