"""Query a checkpoint: captions for an image, images for a text, or zero-shot classes.

  python src/retrieve.py --checkpoint best.pt --image dog.jpg --captions captions.txt
  python src/retrieve.py --checkpoint best.pt --image dog.jpg --prompts "a dog,a cat"
  python src/retrieve.py --checkpoint best.pt --text "a dog on grass" --images photos/
  python src/retrieve.py --checkpoint best.pt --image dog.jpg --classes "dog,cat,car"
"""

from __future__ import annotations

import argparse

from cliptune import retrieval
from cliptune.checkpoint import load_model
from cliptune.cli.common import run_cli
from cliptune.runtime import resolve_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s --checkpoint PATH QUERY [options]",
        epilog="\n".join(__doc__.splitlines()[2:]), formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pt checkpoint")
    parser.add_argument("--image", metavar="IMG", help="image to describe or classify")
    candidates = parser.add_mutually_exclusive_group()
    candidates.add_argument("--captions", metavar="FILE", help="candidate captions, one a line")
    candidates.add_argument("--prompts", metavar="A,B,C", help="comma-separated candidate captions")
    candidates.add_argument("--classes", metavar="A,B,C", help="class names for zero-shot labels")
    parser.add_argument("--templates", metavar="FILE",
                        help="prompt templates with {} for the class name, one a line")
    parser.add_argument("--text", help="text to search --images for")
    parser.add_argument("--images", metavar="DIR", help="folder of images to rank")
    parser.add_argument("--topk", type=int, default=5, metavar="K", help="results to show")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=retrieval.BATCH_SIZE, metavar="N",
                        help="captions or images encoded at once (memory, not results)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    image_query = {"--image": args.image, "--captions": args.captions,
                   "--prompts": args.prompts, "--classes": args.classes,
                   "--templates": args.templates}
    text_query = {"--text": args.text, "--images": args.images}
    image_flags = [flag for flag, value in image_query.items() if value is not None]
    text_flags = [flag for flag, value in text_query.items() if value is not None]
    if image_flags and text_flags:
        parser.error(f"{' '.join(image_flags)} and {' '.join(text_flags)} are two different "
                     "queries: give either --image with --captions, --prompts or --classes, "
                     "or --text with --images, in separate commands")
    by_image = args.image is not None and any((args.captions, args.prompts, args.classes))
    by_text = args.text is not None and args.images is not None
    if not (by_image or by_text):
        parser.error("give either --image with --captions, --prompts or --classes, "
                     "or --text with --images")
    if args.templates and not args.classes:
        parser.error("--templates needs --classes")
    return args


def run(argv: list[str] | None = None) -> None:
    """Parse `argv` and do the work; user errors raise `CliptuneError`."""
    args = parse_args(argv)
    loaded = load_model(args.checkpoint, resolve_device(args.device))
    if args.text is not None:
        matches = retrieval.rank_images(loaded, args.text, args.images, topk=args.topk,
                                        batch_size=args.batch_size)
        kind = "image"
    elif args.classes:
        templates = (retrieval.read_lines(args.templates, "--templates") if args.templates
                     else retrieval.DEFAULT_TEMPLATES)
        classes = retrieval.split_list(args.classes, "--classes")
        matches = retrieval.classify(loaded, args.image, classes, templates=templates,
                                     topk=args.topk)
        kind = "class"
    else:
        captions = (retrieval.read_lines(args.captions, "--captions") if args.captions
                    else retrieval.split_list(args.prompts, "--prompts"))
        matches = retrieval.rank_captions(loaded, args.image, captions, topk=args.topk,
                                          batch_size=args.batch_size)
        kind = "caption"
    print(f"{'rank':>4}  {'cosine':>7}  {'prob':>6}  {kind}")
    for rank, match in enumerate(matches, start=1):
        print(f"{rank:>4}  {match.score:>+7.4f}  {100 * match.probability:>5.1f}%  {match.label}")


def main(argv: list[str] | None = None) -> None:
    """`cliptune-retrieve`: `run` with user errors printed (exit 2), never a traceback."""
    run_cli(lambda: run(argv))
