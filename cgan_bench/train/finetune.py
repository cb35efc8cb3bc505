"""Fine-tuning a finished run with a frozen classifier's loss on G (the projection paper's appendix experiment).

After adversarial training, the paper fine-tuned G with its loss augmented by a pretrained classifier's
cross-entropy: better-looking, more classifiable images at the cost of diversity. Here a fine-tune is an
ordinary Hydra job with `finetune.parent=RUN_DIR`:

- its own run directory; the parent (path, final iteration, weight, classifier) is recorded in status.json and
  in a `finetune_start` line of metrics.jsonl, and its config holds `finetune.*`;
- it starts from the parent's final checkpoint: G, D, both Adam states, the random stream and the iteration
  count (so weight 0 is exactly the parent trained on adversarially: the fair control);
- G's loss becomes the adversarial loss + `finetune.weight` x CE(classifier(G(z, y)), y) for
  `finetune.iterations` more G iterations (train.iterations = the parent's + those); D trains as usual;
- the LR: the packaged recipes end at LR 0 (linear decay), so "the parent's final LR" would train nothing.
  The fine-tune restarts at `finetune.lr` (null = train.lr, the parent's LR before its decay) and decays
  linearly to 0 at its last iteration, like the parent's own end of training;
- then the usual final evaluation.

The classifier (`finetune.classifier`):
- `independent` (default): the domain classifier's recipe (metrics/classifier.py) with another seed, cached
  beside it. Its own weights and errors, but trained on the same images: partly independent of the
  evaluation's classifier, which scores class accuracy.
- `domain`: the evaluation's own classifier (feature space `classifier` or `digit_channels`): class accuracy is
  then measured by the classifier G was tuned against, and inflated by construction.
- a PATH: a module saved with torch.save(model, PATH) (loaded with weights_only=False: only files you trust) or
  TorchScript (torch.jit.save). It takes float images (N, 3, H, W) in [-1, 1] at the dataset's resolution
  (G's output) and returns logits (N, n_classes).
"""
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from ..config import ConfigError
from ..data import ImageData
from ..metrics.classifier import load_or_train_classifier
from .checkpoint import CheckpointUnreadable, load_checkpoint
from .cuda_graph import learning_rates_as
from .loop import Trainer, config_differences, linear_decay, resume_relevant
from .run_dir import RunDir

log = logging.getLogger("cgan_bench")

INDEPENDENT_SEED = 1  # the evaluation's domain classifier is trained with seed 0
IDENTITY = ("dataset.", "model.", "head.")  # what the child must build exactly as the parent did


class ParentRefused(ConfigError):
    """finetune.parent is no completed run of the model this job builds (a user error: one line, exit code 2)."""


@dataclass
class Parent:
    path: Path  # absolute
    iteration: int  # its final iteration (its last checkpoint's)
    state: dict  # that checkpoint: G, D, optimisers, schedulers, RNG, iteration


# ---- the parent -------------------------------------------------------------------------------------------
def begin(cfg, run: RunDir) -> Parent | None:
    """For a fine-tune (finetune.parent set): check the settings and the parent before anything runs, and set
    train.iterations to the parent's final iteration + finetune.iterations (and eval.every to give
    finetune.curve_points curve evaluations over the fine-tune). Called after config.validate; a refusal
    (ParentRefused, a ConfigError) is raised and the caller records it (app.record_refusal). None for an
    ordinary run."""
    if OmegaConf.select(cfg, "finetune.parent") is None:
        return None
    parent = read_parent(cfg, run.path)
    cfg.train.iterations = parent.iteration + int(cfg.finetune.iterations)
    points = cfg.finetune.get("curve_points")
    if points and cfg.eval.every:  # the fine-tune's own curve (eval.every=0, final only, stays so)
        cfg.eval.every = max(1, int(cfg.finetune.iterations) // int(points))
    return parent


def recipe(cfg) -> dict:
    """The flattened train.* settings a resume would compare (budgets and logging cadence left out)."""
    return {k: v for k, v in resume_relevant(cfg).items() if k.startswith("train.")}


def identity(cfg) -> dict:
    """The flattened dataset/model/head settings (those that may differ on resume left out, e.g. dataset.root)."""
    return {k: v for k, v in resume_relevant(cfg).items() if k.startswith(IDENTITY)}


def read_parent(cfg, child_dir: Path) -> Parent:
    """The parent run, refused in one line unless it completed, kept its final checkpoint and was trained with
    the dataset, model and head this job builds."""
    path, status, where = check_parent(cfg, child_dir)
    try:
        state = load_checkpoint(path / "checkpoints", map_location="cpu")
    except CheckpointUnreadable:
        state = None
    if state is None or state.get("iteration") != status.get("iteration"):
        found = "none is readable" if state is None else f"the readable one is at iteration {state.get('iteration')}"
        raise ParentRefused(f"{where} has no final checkpoint (its status says iteration {status.get('iteration')}; "
                            f"{found} in {path / 'checkpoints'}); fine-tune a completed run that kept its checkpoints")
    return Parent(path, int(state["iteration"]), state)


def check_parent(cfg, child_dir: Path, warn: bool = True) -> tuple[Path, dict, str]:
    """(path, status, 'finetune.parent=...') of a parent that exists, completed and was trained with this job's
    dataset/model/head, else ParentRefused: what a sweep checks of every job before the first runs (the checkpoint
    itself is read when the job starts). `warn`: log a recipe that differs from the parent's."""
    given = str(cfg.finetune.parent)
    where = f"finetune.parent={given}"
    path = Path(given).expanduser().absolute()
    if path == Path(child_dir).absolute():
        raise ParentRefused(f"{where} is this job's own run directory; give the directory of the run to fine-tune")
    if not path.is_dir():
        raise ParentRefused(f"{where} is not allowed: no such directory (give the run directory of a completed run)")
    try:
        status = json.loads((path / "status.json").read_text())
    except (OSError, ValueError):
        status = None
    if not status or status.get("state") != "completed":
        found = "it has no readable status.json" if not status else \
            f"its status is {status.get('state')!r} at iteration {status.get('iteration')} of " \
            f"{status.get('total_iterations')}"
        raise ParentRefused(f"{where} is not a completed run ({found}); fine-tune a completed run, or rerun the "
                            f"parent's command to finish it first")
    config_file = path / ".hydra" / "config.yaml"
    try:
        parent_cfg = OmegaConf.load(config_file)
        differences = config_differences(identity(parent_cfg), identity(cfg))
        other_recipe = config_differences(recipe(parent_cfg), recipe(cfg))
    except Exception as err:  # missing, not YAML, an interpolation that does not resolve
        raise ParentRefused(f"{where}: cannot read its config {config_file} ({type(err).__name__}); the parent "
                            f"must be a run directory of this harness") from None
    if other_recipe and warn:  # allowed (a deliberate choice is possible), but never silent: batch, n_dis, precision...
        log.warning("%s: this fine-tune trains with other train settings than its parent did (parent -> this "
                    "job: %s); give it the parent's train=... to continue the parent's recipe", where,
                    "; ".join(other_recipe))
    if differences:
        raise ParentRefused(f"{where} was trained with another dataset/model/head than this job builds (parent -> "
                            f"this job: {'; '.join(differences)}); give this job the parent's settings (e.g. "
                            f"head=..., dataset=...) or fine-tune another run")
    return path, status, where


# ---- the classifier and its loss ---------------------------------------------------------------------------
class FromSignedImages(nn.Module):
    """A harness classifier of uint8-scaled images ((features, logits) = model(x_uint8)) fed G's output in
    [-1, 1]: (x + 1) x 127.5 is undone by its own x / 127.5 - 1, and the gradient reaches G."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + 1.0) * 127.5)[1]


def independent_classifier(train: ImageData, test: ImageData, device, epochs: int,
                           cache_dir: str | None) -> tuple[nn.Module, float]:
    """The domain classifier's recipe with seed INDEPENDENT_SEED, trained once and cached beside the evaluation's
    (the same cache rules: metrics/classifier.load_or_train_classifier)."""
    return load_or_train_classifier(train, test, device, epochs, cache_dir, seed=INDEPENDENT_SEED)


def user_classifier(given: str, train: ImageData, device) -> nn.Module:
    """A classifier file (TorchScript or a torch.save'd module), checked on two real images before training."""
    path = Path(given).expanduser()
    where = f"finetune.classifier={given}"
    if not path.is_file():
        raise ConfigError(f"{where} is not allowed: not independent, domain or an existing file")
    try:
        model = torch.jit.load(str(path), map_location=device)
    except Exception:  # not TorchScript: a pickled module (the user's own file, hence weights_only=False)
        try:
            model = torch.load(path, map_location=device, weights_only=False)
        except Exception as err:
            raise ConfigError(f"{where} cannot be loaded ({type(err).__name__}); save the module with "
                              f"torch.save(model, PATH) or torch.jit.save(torch.jit.script(model), PATH)") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where} holds a {type(model).__name__}, not a module; save the whole module "
                          f"(torch.save(model, PATH)), not its state_dict")
    model.eval()
    for param in model.parameters():  # frozen (ScriptModules have no requires_grad_)
        param.requires_grad_(False)
    x = train.images[:2].to(device).float() / 127.5 - 1.0
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(f"{where} fails on a batch of shape {tuple(x.shape)} in [-1, 1] ({type(err).__name__}: "
                          f"{first}); it must map such images to logits") from None
    if not torch.is_tensor(out) or tuple(out.shape) != (2, train.n_classes):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(f"{where} maps a batch of shape {tuple(x.shape)} in [-1, 1] to {shape}; it must return "
                          f"logits of shape (N, {train.n_classes})")
    return model


def loss_classifier(spec: str, space, train: ImageData, test: ImageData, device, epochs: int,
                    cache_dir: str | None) -> tuple[nn.Module, str]:
    """(frozen classifier of images in [-1, 1] -> logits, a description for status.json and the report)."""
    if spec == "independent":
        model, acc = independent_classifier(train, test, device, epochs, cache_dir)
        return FromSignedImages(model), f"independent (domain classifier recipe, seed {INDEPENDENT_SEED}, " \
                                        f"held-out accuracy {acc:.3f})"
    if spec == "domain":
        if space.name not in ("classifier", "digit_channels"):
            raise ConfigError(f"finetune.classifier=domain is not allowed with the {space.name} feature space "
                              f"(no gradient reaches G): use independent or a PATH")
        return FromSignedImages(space.model), f"domain (the evaluation's own {space.name} classifier)"
    return user_classifier(spec, train, device), f"file {spec}"


@dataclass
class ClassifierLoss:
    """weight x CE(classifier(G(z, y)), y), averaged over the batch: the term a fine-tune adds to G's loss. The
    classifier is frozen (G's gradient flows through it, its weights never change) and runs in fp32."""
    classifier: nn.Module  # images in [-1, 1] -> logits
    weight: float

    def __call__(self, x_fake: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.weight * F.cross_entropy(self.classifier(x_fake.float()), y)


# ---- the trainer -------------------------------------------------------------------------------------------
def set_schedule(trainer: Trainer, lr: float, iterations: int) -> None:
    """Both optimisers at `lr`, decaying linearly to 0 over `iterations` (the Trainer's own linear decay,
    restarted); it replaces the schedule the Trainer built from train.*."""
    for name, opt in (("sched_g", trainer.opt_g), ("sched_d", trainer.opt_d)):
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] = lr
        setattr(trainer, name, torch.optim.lr_scheduler.LambdaLR(opt, linear_decay(iterations, 0)))
        learning_rates_as(opt, trainer.graphed, trainer.device)  # train.cuda_graph reads a tensor learning rate
    if trainer.graphed_step is not None:  # new lr tensors: a graph captured before would read freed ones
        trainer.graphed_step.reset()


def fine_tune_lr(cfg) -> float:
    return float(cfg.train.lr if cfg.finetune.lr is None else cfg.finetune.lr)


def attach(trainer: Trainer, parent: Parent, space, train: ImageData, test: ImageData) -> None:
    """Make `trainer` the fine-tune: its LR schedule, the classifier loss on G (weight > 0; weight 0 loads no
    classifier and changes nothing), the parent in status.json. Call it before resuming the child's own
    checkpoint (which continues this schedule), then `start_from_parent` if there was none."""
    f, e = trainer.cfg.finetune, trainer.cfg.eval
    set_schedule(trainer, fine_tune_lr(trainer.cfg), int(f.iterations))
    if f.weight > 0:
        classifier, described = loss_classifier(str(f.classifier), space, train, test, trainer.device,
                                                int(e.classifier_epochs), e.get("cache_dir"))
        trainer.g_extra_loss = ClassifierLoss(classifier, float(f.weight))
    else:
        described = "none (weight 0: adversarial continuation only)"
    trainer.status_extra = {"finetune_parent": str(parent.path), "finetune_parent_iteration": parent.iteration,
                            "finetune_weight": float(f.weight), "finetune_classifier": described}


def start_from_parent(trainer: Trainer, parent: Parent) -> None:
    """The parent's final state (G, D, optimisers, RNG, iteration, training time), then the fine-tune's schedule
    (the optimisers' state brought back the parent's final LR); a `finetune_start` line in metrics.jsonl."""
    trainer.load_state_dict(parent.state)
    set_schedule(trainer, fine_tune_lr(trainer.cfg), int(trainer.cfg.finetune.iterations))
    trainer.run.log({"iteration": trainer.iteration, "phase": "finetune_start", **trainer.status_extra,
                     "finetune_iterations": int(trainer.cfg.finetune.iterations), "lr": fine_tune_lr(trainer.cfg)})
