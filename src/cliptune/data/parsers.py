"""Caption file formats: recognise a file's format and read it into (image name, caption) pairs.

Formats (the names `DataConfig.format` takes):

- `kaggle`: Kaggle Flickr30k `results.csv`: header `image_name| comment_number| comment`,
  `|`-separated, leading spaces. Its malformed row (`2199200615.jpg| 4   A dog ...`, the
  number and caption fused) is repaired, not dropped.
- `captions_txt`: header `image,caption`, each line split on the first `<image ext>,`
  (captions may contain commas).
- `tsv`: `file<TAB>caption`; a Flickr8k-style `#n` suffix on the file name is removed.
- `coco`: COCO captions JSON (`images` with `id`/`file_name`, `annotations` with
  `image_id`/`caption`).

Files must be UTF-8. Empty captions and unreadable lines are skipped with a warning
that counts them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from cliptune.data.preprocess import IMAGE_EXTENSIONS
from cliptune.errors import DataError, warn_skipped

Pairs = list[tuple[str, str]]

_EXT = "|".join(IMAGE_EXTENSIONS)
_CAPTIONS_TXT_LINE = re.compile(rf"^([^\t]+?\.(?:{_EXT})),(.*)$", re.IGNORECASE)
_KAGGLE_FUSED_FIELD = re.compile(r"^\s*\d+\s+(.*)$")  # " 4   A dog runs ..." (no second "|")
_TSV_NAME = re.compile(rf"^[^\t]+\.(?:{_EXT})(?:#\d+)?$", re.IGNORECASE)
_FLICKR8K_SUFFIX = re.compile(r"#\d+$")


def read_text(path: Path) -> str:
    """The file's text; a byte that is not UTF-8 raises `DataError` naming the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{data[err.start]:02x}); "
            "re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.txt > out.txt`"
        ) from None


def _finish(pairs: Pairs, bad_lines: list[int], total: int, path: Path) -> Pairs:
    """Drop empty captions and warn about them and about unreadable lines."""
    warn_skipped(len(bad_lines), total, "lines that could not be read", str(path),
                 [f"line {n}" for n in bad_lines])
    kept = [(name, caption) for name, caption in pairs if caption]
    empty = [name for name, caption in pairs if not caption]
    warn_skipped(len(empty), len(pairs), "captions that are empty", str(path), empty)
    return kept


def _data_lines(text: str, header: str) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers, without a header starting with `header`."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if lines and lines[0][1].strip().lower().replace(" ", "").startswith(header):
        lines = lines[1:]
    return lines


def parse_kaggle(text: str, path: Path) -> Pairs:
    """Pairs of a Kaggle Flickr30k `results.csv`."""
    lines = _data_lines(text, "image_name|")
    pairs: Pairs = []
    bad: list[int] = []
    for number, line in lines:
        fields = line.split("|", 2)
        if len(fields) == 3:
            name, caption = fields[0], fields[2]
        elif len(fields) == 2 and (fused := _KAGGLE_FUSED_FIELD.match(fields[1])):
            name, caption = fields[0], fused.group(1)
        else:
            bad.append(number)
            continue
        pairs.append((name.strip(), caption.strip()))
    return _finish(pairs, bad, len(lines), path)


def _unquote(caption: str) -> str:
    if len(caption) >= 2 and caption[0] == caption[-1] == '"':
        return caption[1:-1].replace('""', '"')
    return caption


def parse_captions_txt(text: str, path: Path) -> Pairs:
    """Pairs of an `image,caption` file."""
    lines = _data_lines(text, "image,caption")
    pairs: Pairs = []
    bad: list[int] = []
    for number, line in lines:
        match = _CAPTIONS_TXT_LINE.match(line.strip())
        if match is None:
            bad.append(number)
            continue
        pairs.append((match.group(1).strip(), _unquote(match.group(2).strip()).strip()))
    return _finish(pairs, bad, len(lines), path)


def parse_tsv(text: str, path: Path) -> Pairs:
    """Pairs of a `file<TAB>caption` file."""
    lines = _data_lines(text, "image\t")
    pairs: Pairs = []
    bad: list[int] = []
    for number, line in lines:
        fields = line.split("\t", 1)
        if len(fields) != 2 or not fields[0].strip():
            bad.append(number)
            continue
        name = _FLICKR8K_SUFFIX.sub("", fields[0].strip())
        pairs.append((name, fields[1].strip()))
    return _finish(pairs, bad, len(lines), path)


def parse_coco(text: str, path: Path) -> Pairs:
    """Pairs of a COCO captions JSON file."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not _is_coco(data):
        raise DataError(
            f"{path}: not a COCO captions file (needs 'images' with 'id' and 'file_name' "
            "and 'annotations' with 'image_id' and 'caption')"
        )
    names = {}
    for image in data["images"]:
        if isinstance(image, dict) and "id" in image and "file_name" in image:
            names[image["id"]] = str(image["file_name"])
    pairs: Pairs = []
    bad: list[int] = []
    for number, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict) or annotation.get("image_id") not in names:
            bad.append(number)
            continue
        pairs.append((names[annotation["image_id"]], str(annotation.get("caption") or "").strip()))
    warn_skipped(len(bad), len(data["annotations"]), "annotations without a known image",
                 str(path), [f"annotation {n}" for n in bad])
    return _finish(pairs, [], len(pairs), path)


def _is_coco(data: object) -> bool:
    return (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    )


PARSERS: dict[str, Callable[[str, Path], Pairs]] = {
    "kaggle": parse_kaggle,
    "captions_txt": parse_captions_txt,
    "tsv": parse_tsv,
    "coco": parse_coco,
}


def sniff_format(path: Path) -> str | None:
    """The format of the caption file at `path`, or None if it is not one we read."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            return "coco" if _is_coco(json.loads(path.read_bytes())) else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
    with path.open("rb") as handle:
        head = handle.read(8192).decode("utf-8", errors="replace")
    lines = [line.strip() for line in head.splitlines() if line.strip()][:3]
    if not lines:
        return None
    first = lines[0].lower().replace(" ", "")
    sample = lines[1] if len(lines) > 1 else lines[0]
    if first.startswith("image_name|") or re.match(rf"^[^|]+\.(?:{_EXT})\|", sample, re.I):
        return "kaggle"
    if "\t" in sample and _TSV_NAME.match(sample.split("\t", 1)[0]):
        return "tsv"
    if first.startswith("image,caption") or _CAPTIONS_TXT_LINE.match(sample):
        return "captions_txt"
    return None


def read_caption_file(path: Path, fmt: str) -> Pairs:
    """Read the caption file at `path` in format `fmt` (a key of `PARSERS`)."""
    if fmt not in PARSERS:
        raise DataError(f"unknown caption format {fmt!r}; choose one of: {', '.join(PARSERS)}")
    return PARSERS[fmt](read_text(path), path)
