"""`StagePlan`: everything one stage decides before it trains, in one place.

Which layer groups train (`stages.N.train`), each trained group's learning-rate multiplier
(`layer_decay`, `lr_multipliers`), freezing the rest with the BatchNorm policy
(`backbone.train_bn`), the stage's fresh optimizer and the banner the run log prints. Train,
`lr-find` and the benchmarks all set a stage up through it. Its `peft` mode (LoRA, BitFit,
norm tuning: `tftune.model.peft`) narrows what trains inside the selected groups.
Whether the frozen prefix can be cached is decided by `tftune.training.stage_data`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

from tftune.config import RecipeConfig, StageConfig
from tftune.errors import ConfigError
from tftune.model import peft
from tftune.training import optim
from tftune.training.trainable import count_trainable, selected_groups, set_trainable


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """Stage `index` (0-based) of `total`: its config, the indices of the layer groups it
    trains (bottom to top; the head always trains) and their multipliers {group name: x}."""

    index: int
    total: int
    stage: StageConfig
    group_names: tuple[str, ...]
    train_indices: tuple[int, ...]
    multipliers: Mapping[str, float]
    train_bn: bool = False
    groups: tuple = dataclasses.field(default=(), compare=False, repr=False)  # LayerGroups
    seed: int = 0  # seeds the LoRA adapters' initial values
    targets: tuple = dataclasses.field(default=(), compare=False, repr=False)  # LoRA layers
    ema_momentum: Optional[float] = None  # `train.average: ema`: the moving average's momentum
    soup: str = "none"  # `train.average: uniform | greedy`: the soup made when the stage ends
    soup_epochs: int = 3  # `train.average_epochs`: how many best epochs a uniform soup takes
    # `train.time_limit`: the planned part of an epoch (the last epoch ends after this many
    # steps, and the schedule spans the stage's steps up to there; None: whole epochs); the
    # schedule's stretches so far (a resumed stage) and whether it may be stretched.
    last_epoch_steps: Optional[int] = None
    stretches: tuple = ()
    stretchable: bool = False

    @classmethod
    def build(cls, cfg: RecipeConfig, index: int, groups: Sequence) -> "StagePlan":
        """The plan of `cfg.stages[index]` for the backbone's `groups`; raises ConfigError for
        an unknown group, a bad `top:N` or bad multipliers, naming the key."""
        stage = cfg.stages[index]
        names = tuple(g.name for g in groups)
        where = f"stages.{index}"
        indices = tuple(selected_groups(stage.train, groups, f"{where}.train"))
        multipliers = optim.group_multipliers(names, indices, stage.layer_decay,
                                              stage.lr_multipliers, where)
        targets = _peft_targets(stage, [groups[i] for i in indices], where)
        ema = cfg.train.ema_momentum if cfg.train.average == "ema" else None
        soup = cfg.train.average if cfg.train.average in ("uniform", "greedy") else "none"
        return cls(index, len(cfg.stages), stage, names, indices, multipliers,
                   cfg.backbone.train_bn, tuple(groups), cfg.train.seed, tuple(targets), ema,
                   soup, cfg.train.average_epochs)

    @classmethod
    def single(cls, stage: StageConfig, index: int = 0) -> "StagePlan":
        """A plan for a bare `StageConfig` that scales no group (for a model whose
        trainability is already set, e.g. in tests and benchmarks)."""
        return cls(index, index + 1, stage, (), (), {})

    @classmethod
    def all(cls, cfg: RecipeConfig, groups: Sequence) -> list["StagePlan"]:
        """Every stage's plan, so a typo in stage 3 fails before stage 1 trains."""
        plans = [cls.build(cfg, i, groups) for i in range(len(cfg.stages))]
        _check_int8_base(plans, groups)
        return plans

    # -- trainability --------------------------------------------------------------------

    @property
    def peft(self) -> str:
        return getattr(self.stage, "peft", "none")

    def create_adapters(self) -> int:
        """Creates the stage's variables: the int8 base (`peft_base: int8`, quantized once)
        and the LoRA adapters (if any are missing), and marks what the stage tunes for the
        adapters file. `apply` does it, and a resumed run does it for the stages before its
        checkpoint, before restoring it."""
        trained = [self.groups[i] for i in self.train_indices]
        if self.stage.peft_base == "int8":
            peft.quantize_base([l for g in self.groups for l in g.layers])
        peft.mark_tuned(trained, self.peft)
        if self.peft not in peft.LORA_MODES:
            return 0
        lora = self.stage.lora
        return peft.enable(self.targets, lora.rank, lora.alpha, self.seed, self.index)

    def apply(self, backbone, head: Sequence, always_frozen: Sequence = ()) -> None:
        """Freezes the backbone but the plan's groups (BatchNorm per `train_bn`); the head
        trains; `always_frozen` layers (no gradient reaches them) stay frozen. Inside the
        groups, the stage's `peft` mode picks which variables train (`tftune.model.peft`)."""
        self.create_adapters()
        set_trainable(backbone.model, self.groups, self.train_indices, head, self.train_bn,
                      always_frozen)
        peft.apply_mode([self.groups[i] for i in self.train_indices], self.peft, self.targets,
                        self.train_bn)
        for layer in always_frozen:
            layer.trainable = False

    # -- optimizer -----------------------------------------------------------------------

    def variable_multipliers(self) -> dict[str, float]:
        """{variable path: multiplier} for the trainable variables of the trained groups."""
        return optim.variable_multipliers(self.groups, self.multipliers)

    def optimizer(self, steps_per_epoch: int, stage: Optional[StageConfig] = None):
        """A fresh optimizer for the stage: its schedule over `stage.steps_per_epoch` (or
        `steps_per_epoch`) steps an epoch, with the groups' learning-rate multipliers.
        `stage` replaces the stage's settings (lr-find sweeps a constant rate, unaveraged)."""
        ema = self.ema_momentum if stage is None else None
        total, timed = None, stage is None
        if timed and self.stretches:  # the schedule as first planned, then its stretches
            total = int(self.stretches[0][1])
        elif timed and self.last_epoch_steps is not None:
            per_epoch = self.stage.steps_per_epoch or steps_per_epoch
            total = (self.stage.epochs - 1) * per_epoch + self.last_epoch_steps
        stage = stage or self.stage
        return optim.build_optimizer(stage, stage.steps_per_epoch or steps_per_epoch,
                                     self.variable_multipliers(), ema_momentum=ema,
                                     total_steps=total,
                                     stretches=self.stretches if timed else (),
                                     stretchable=self.stretchable and timed)

    # -- the run log ---------------------------------------------------------------------

    def trained_groups(self) -> str:
        names = [self.group_names[i] for i in self.train_indices]
        if not names:
            return "head only"
        if len(names) > 4:
            return f"{names[0]} .. {names[-1]} (+ head)"
        return ", ".join(names) + " + head"

    def banner(self, model) -> str:
        """The stage's header line: what trains, how many weights, for how long, how fast."""
        s = self.stage
        mode = ""
        if self.peft != "none":
            mode = f" ({self.peft}"
            if self.peft in peft.LORA_MODES:
                mode += f", rank {s.lora.rank}, {len(self.targets)} layers adapted"
            mode += ")"
        trainable = count_trainable(model)
        total = count_params(model)
        return (
            f"== Stage {self.index + 1}/{self.total}: {s.name} | trains: {self.trained_groups()}"
            f"{mode} | {trainable:,} trainable params ({100 * trainable / max(total, 1):.2g}%) "
            f"| {s.epochs} epoch(s), "
            f"lr {s.learning_rate:g} ({s.optimizer}, {s.schedule}"
            f"{', warmup ' + format(s.warmup, 'g') if s.warmup else ''}) =="
        )

    def multiplier_line(self) -> Optional[str]:
        """'   lr multipliers: block_5 x0.9, ..., head x1' when any group is not at x1."""
        if all(m == 1.0 for m in self.multipliers.values()):
            return None
        shown = [f"{n} x{self.multipliers[n]:.3g}" for n in self.group_names if n in self.multipliers]
        return "   lr multipliers: " + ", ".join(shown) + ", head x1"

    def announce(self, model, echo) -> None:
        echo(self.banner(model))
        line = self.multiplier_line()
        if line:
            echo(line)


def count_params(model) -> int:
    return int(sum(np.prod(v.shape) for v in model.weights))


def _peft_targets(stage: StageConfig, trained: Sequence, where: str) -> list:
    """The layers a LoRA stage adapts (checked now, so a bad target fails before training)."""
    mode = getattr(stage, "peft", "none")
    if mode == "none":
        if stage.peft_base != "none":
            raise ConfigError(
                f"Invalid value for '{where}.peft_base': {stage.peft_base!r} quantizes the frozen "
                f"base under a PEFT stage, and this stage has peft: none (its kernels train). "
                f"Expected peft: lora, lora_bias, lora_norm, bitfit or norm with peft_base: "
                f"{stage.peft_base}, or peft_base: none."
            )
        return []
    if not trained:
        raise ConfigError(
            f"Invalid value for '{where}.peft': {mode!r} narrows what trains inside the "
            f"backbone groups a stage trains, and 'train: {stage.train}' trains none. Expected "
            f"train: top:N, all or group names with peft: {mode}, or peft: none."
        )
    if mode not in peft.LORA_MODES:
        return []
    if not stage.lora.rank >= 1:
        raise ConfigError(f"Invalid value for '{where}.lora.rank'. Expected an integer >= 1. "
                          f"Received: {stage.lora.rank!r}")
    if not stage.lora.alpha > 0:
        raise ConfigError(f"Invalid value for '{where}.lora.alpha'. Expected a number > 0. "
                          f"Received: {stage.lora.alpha!r}")
    return peft.target_layers(trained, stage.lora.targets, where)


def _check_int8_base(plans: Sequence[StagePlan], groups: Sequence) -> None:
    """`peft_base: int8` quantizes the base for the rest of the run: no LoRA stage may come
    before it (its adapters would sit on float kernels), no later stage may train whole
    kernels (`peft: none` with backbone groups), and the backbone needs Dense / EinsumDense
    layers (Keras has no int8 convolution)."""
    first = next((p.index for p in plans if p.stage.peft_base == "int8"), None)
    if first is None:
        return
    where = f"stages.{first}.peft_base"
    early = [p.index for p in plans[:first] if p.peft in peft.LORA_MODES]
    if early:
        raise ConfigError(
            f"Invalid value for '{where}': int8 quantizes the base, and stage {early[0]} "
            f"already put LoRA adapters on it in float. Expected peft_base: int8 on the first "
            f"LoRA stage (it stays int8 for the rest of the run)."
        )
    late = [p.index for p in plans[first + 1:] if p.peft == "none" and p.train_indices]
    if late:
        raise ConfigError(
            f"Invalid value for 'stages.{late[0]}.peft': none trains whole kernels, and "
            f"'{where}: int8' quantized them for the rest of the run. Expected a PEFT mode "
            f"(lora, lora_bias, lora_norm, bitfit, norm) or train: head after an int8 stage."
        )
    layers = [l for g in groups for top in g.layers for l in peft.all_layers(top)]
    if not any(peft.quantizable(l) for l in layers):
        raise ConfigError(
            f"Invalid value for '{where}': int8. Keras 3.15 quantizes Dense and EinsumDense "
            f"kernels to int8 (not convolutions), and this backbone has none. Expected "
            f"peft_base: none for a convolutional backbone."
        )
