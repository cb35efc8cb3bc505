"""`python -m cgan_bench.sample RUN_DIR`: images from a trained generator, as one grid or one file per image."""
import argparse
import sys
from pathlib import Path

EXAMPLES = """examples:
  python -m cgan_bench.sample runs/RUN                    # the classes and z of samples/final.png -> samples.png
  python -m cgan_bench.sample runs/RUN --classes 0,3,7 --n 16 --truncation 1.0 --out three.png
  python -m cgan_bench.sample runs/RUN --classes all --n 100 --format files --out generated/
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cgan_bench.sample", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Sample a trained run's generator: a grid (rows = classes, the same "
                                            "z down each column, like samples/final.png) or one PNG per image.")
    p.add_argument("run_dir", type=Path, help="the run directory (holds checkpoints/ and .hydra/)")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names or indices, or 'all' (default: final.png's rows: every "
                        "class, or 10 evenly spread ones when there are more)")
    p.add_argument("--n", type=int, default=10, help="images per class (grid columns); default 10")
    p.add_argument("--seed", type=int, default=None,
                   help="z seed (default: the run's seed + 1234, the z of samples/final.png)")
    p.add_argument("--truncation", type=float, default=None,
                   help="truncation trick: redraw every z entry with |z| > T (default: plain N(0, I))")
    p.add_argument("--format", choices=("grid", "files"), default="grid",
                   help="grid: one PNG; files: CLASSNAME_i.png per image in the --out folder")
    p.add_argument("--out", type=Path, default=None, help="output PNG (grid) or folder (files); default "
                                                          "samples.png / samples/ in the current directory")
    p.add_argument("--checkpoint", default="last", help="last (default; previous.pt if last.pt is unreadable), "
                                                        "previous, or a .pt file")
    p.add_argument("--device", default="cpu", help="torch device; default cpu")
    return p.parse_args(argv)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv=None) -> None:
    args = parse_args(argv)
    from .generator_api import load_generator, sample, sample_grid
    from .train.checkpoint import CheckpointUnreadable
    from .train.samples import save_png
    if args.n < 1:
        fail(f"--n must be at least 1, got {args.n}")
    if args.truncation is not None and not args.truncation > 0:
        fail(f"--truncation must be > 0, got {args.truncation}")
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
    if args.format == "grid":
        out = args.out or Path("samples.png")
        if out.is_dir():
            fail(f"--out {out} is a folder; a grid needs a file name (or use --format files)")
        out.parent.mkdir(parents=True, exist_ok=True)
        save_png(sample_grid(gen, images, args.n), out)
    else:
        out = args.out or Path("samples")
        out.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(images):
            save_png(image, out / f"{gen.class_names[classes[k // args.n]]}_{k % args.n}.png")
    print(f"wrote {out} ({len(images)} images of {len(classes)} classes from {gen.checkpoint})")


if __name__ == "__main__":
    main()
