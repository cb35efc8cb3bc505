"""`python -m cgan_bench.sample RUN_DIR`: images from a trained generator, as a labelled figure (like
samples/final.png), a pixel grid (like samples/final_raw.png) or one file per image."""
import argparse
import os
import sys
import tempfile
from pathlib import Path

EXAMPLES = """examples:
  python -m cgan_bench.sample runs/RUN                    # samples/final.png again (classes, z, labels) -> samples.png
  python -m cgan_bench.sample runs/RUN --classes 0,3,7 --n 16 --truncation 1.0 --out three.pdf
  python -m cgan_bench.sample runs/RUN --format grid --out raw.png     # the pixel grid, like samples/final_raw.png
  python -m cgan_bench.sample runs/RUN --classes all --n 100 --format files --out generated/
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cgan_bench.sample", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Sample a trained run's generator: a labelled figure (rows = classes, "
                                            "the same z down each column, like samples/final.png), the pixel grid "
                                            "alone (like samples/final_raw.png) or one PNG per image.")
    p.add_argument("run_dir", type=Path, help="the run directory (holds checkpoints/ and .hydra/)")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names or indices, or 'all' (default: final.png's rows: every "
                        "class, or 10 evenly spread ones when there are more)")
    p.add_argument("--n", type=int, default=10, help="images per class (grid columns); default 10")
    p.add_argument("--seed", type=int, default=None,
                   help="z seed (default: the run's seed + 1234, the z of samples/final.png)")
    p.add_argument("--truncation", type=float, default=None,
                   help="truncation trick: redraw every z entry with |z| > T (default: plain N(0, I))")
    p.add_argument("--format", choices=("figure", "grid", "files"), default="figure",
                   help="figure (default): the grid upscaled with class names and a title, PNG or PDF by --out's "
                        "suffix; grid: the pixel grid as PNG; files: CLASSNAME_i.png per image in the --out folder")
    p.add_argument("--out", type=Path, default=None, help="output file (figure, grid) or folder (files); default "
                                                          "samples.png / samples/ in the current directory")
    p.add_argument("--checkpoint", default="last", help="last (default; previous.pt if last.pt is unreadable), "
                                                        "previous, or a .pt file")
    p.add_argument("--device", default="cpu", help="torch device; default cpu")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_writable(out: Path, folder: Path) -> None:
    """Refuse an --out that cannot be written before the generator is loaded and sampled: `folder` (the file's
    parent, or the --format files folder) must be a folder or creatable as one. Probed with a temporary file in
    its nearest existing ancestor, so a refusal leaves nothing behind."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        fail(f"--out {out}: {existing} is a file, not a folder; choose an --out inside a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".sample_write_test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        fail(f"--out {out}: cannot write in {existing} ({err.strerror or err}); choose a writable --out")


def main(argv=None) -> None:
    args = parse_args(argv)
    from .generator_api import load_generator, sample, sample_grid
    from .train.checkpoint import CheckpointUnreadable
    from .train.samples import class_grid_figure, run_title, save_figure, save_png
    if args.n < 1:
        fail(f"--n must be at least 1, got {args.n}")
    if args.truncation is not None and not args.truncation > 0:
        fail(f"--truncation must be > 0, got {args.truncation}")
    out = args.out or Path("samples" if args.format == "files" else "samples.png")
    suffixes = {"figure": (".png", ".pdf"), "grid": (".png",)}.get(args.format)
    if suffixes and out.is_dir():
        fail(f"--out {out} is a folder; a {args.format} needs a file name (or use --format files)")
    if suffixes and out.suffix.lower() not in suffixes:
        fail(f"--out {out}: a {args.format} is written as {' or '.join(suffixes)}")
    if not suffixes and out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; --format files writes one PNG per image into a folder: give a folder's name")
    check_writable(out, out.parent if suffixes else out)
    try:
        gen = load_generator(args.run_dir, device=args.device, checkpoint=args.checkpoint)
        if args.classes is None:
            classes = gen.final_classes()
        elif args.classes == "all":
            classes = list(range(gen.n_classes))
        else:
            classes = [gen.class_index(c.strip()) for c in args.classes.split(",")]
    except (FileNotFoundError, CheckpointUnreadable, ValueError) as e:
        fail(str(e))
    images = sample(gen, classes, args.n, seed=args.seed, truncation=args.truncation)
    if suffixes:
        out.parent.mkdir(parents=True, exist_ok=True)
        grid = sample_grid(gen, images, args.n)
        if args.format == "grid":
            save_png(grid, out)
        else:
            note = ", ".join(([f"z seed {args.seed}"] if args.seed is not None else []) +
                             ([f"truncation {args.truncation:g}"] if args.truncation is not None else []))
            save_figure(class_grid_figure(grid, gen.class_names, classes, args.n,
                                          run_title(gen.head, gen.dataset, gen.iteration, gen.seed),
                                          gen.channels_apart, note), out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(images):
            save_png(image, out / f"{gen.class_names[classes[k // args.n]]}_{k % args.n}.png")
    print(f"wrote {out} ({len(images)} images of {len(classes)} classes from {gen.checkpoint})")


if __name__ == "__main__":
    main()
