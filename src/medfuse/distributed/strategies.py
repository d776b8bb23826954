"""Training strategies by name (``train.strategy`` or ``--strategy``) and the per-process session.

=========  ==================================================================================
single     one process, one device (the default)
ddp        DistributedDataParallel: one model replica per process, gradients averaged
fsdp       FSDP2 ``fully_shard``: parameters, gradients and optimizer state sharded over processes
branch     one process, each branch on its own device (``train.placement``), run concurrently
hybrid     ``ddp`` across processes and nodes, ``branch`` placement inside each process
=========  ==================================================================================

``train.batch_size`` is the GLOBAL batch: with ``world`` processes each takes
``batch_size / world`` samples per step, so gradient averaging makes a step equal to one process
stepping on the whole batch. The trainer (``medfuse.training.trainer.Trainer``) does the rest: it
shards each epoch like ``DistributedSampler``, calls :meth:`Strategy.wrap` once per stage, and
lets only rank 0 write checkpoints, ``metrics.jsonl`` and progress bars.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medfuse.core.errors import MedfuseError, SpecError
from medfuse.core.registry import Registry
from medfuse.core.spec import Spec, parse_spec
from medfuse.distributed.placement import (
    BranchParallel,
    Placement,
    devices_per_process,
    resolve_placement,
)
from medfuse.inference.helpers import Tensors, resolve_device
from medfuse.models import build_model
from medfuse.training.callbacks import Callback
from medfuse.training.finetune import apply_finetune
from medfuse.training.trainer import Trainer

log = logging.getLogger("medfuse.distributed")

STRATEGIES: Registry[Any] = Registry("strategy")

#: strategies that need several processes to mean anything (one process falls back as noted)
_ONE_PROCESS_FALLBACK = {"ddp": "single", "fsdp": "single", "hybrid": "branch"}


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a ``torchrun`` job (read from its environment)."""

    rank: int
    world: int
    local_rank: int
    local_world: int
    restart: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_env() -> DistEnv | None:
    """The job this process belongs to: a torchrun worker, or a process group already set up by
    the caller; ``None`` for a plain single process."""
    if dist.is_available() and dist.is_initialized():
        world = dist.get_world_size()
        return DistEnv(
            dist.get_rank(),
            world,
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("LOCAL_WORLD_SIZE", world)),
            int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
        )
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        return DistEnv(
            int(os.environ["RANK"]),
            world,
            int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("LOCAL_WORLD_SIZE", world)),
            int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
        )
    return None


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 (the process that writes files and prints)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


class Strategy:
    """One process, one device: the model goes through the trainer unwrapped."""

    name = "single"

    def __init__(self, session: Session) -> None:
        self.session = session

    @classmethod
    def validate(cls, spec: Spec, world: int) -> None:
        """Refuse a spec this strategy cannot train with ``world`` processes (SpecError)."""
        if spec.train.placement:
            raise SpecError(
                "train.placement",
                f"is used by the 'branch' and 'hybrid' strategies only; the strategy is "
                f"{cls.name!r}",
            )

    def prepare(self, model: nn.Module) -> None:
        """Called once, before the Trainer sees the model (place, shard): a model too big for one
        device is never gathered on one."""

    def wrap(self, model: nn.Module) -> nn.Module:
        """Called at the start of each stage, after its parameters are (un)frozen."""
        return model

    def full_model(self, trainer: Trainer) -> nn.Module:
        """The trained plain CompositeModel on one device (collective: every rank calls it)."""
        return trainer.model

    def close(self) -> None:
        """Release hooks and handles."""


STRATEGIES.register("single", doc="one process, one device (the default)")(Strategy)


def _ddp(model: nn.Module, device: torch.device | None) -> nn.Module:

    if not any(p.requires_grad for p in model.parameters()):
        return model  # a stage with nothing to train: DDP refuses such a module
    gc.collect()  # the previous stage's DDP (and its gradient hooks) must be gone first
    ids = [device] if device is not None and device.type == "cuda" else None
    # static_graph: each stage uses the same parameters every step, and some stay unused
    # (frozen fusion while branches train, aux heads only in some stages)
    return DistributedDataParallel(model, device_ids=ids, static_graph=True)


@STRATEGIES.register(
    "ddp", doc="DistributedDataParallel: a replica per process, averaged gradients"
)
class DDPStrategy(Strategy):
    """DistributedDataParallel over all processes; rebuilt per stage (frozen parameters change)."""

    name = "ddp"

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.session.world == 1 and not dist.is_initialized():
            return model
        return _ddp(model, self.session.device)


@STRATEGIES.register("branch", doc="one process, each branch on its own device, run concurrently")
class BranchStrategy(Strategy):
    """Model parallel: ``train.placement`` puts each branch (and the fusion) on a device."""

    name = "branch"

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self.placement = Placement(session.devices)

    @classmethod
    def validate(cls, spec: Spec, world: int) -> None:
        if world > 1:
            raise SpecError(
                "train.strategy",
                f"'branch' is model parallel inside one process, but {world} processes were "
                "started; use 'hybrid' (ddp across processes + branch placement inside each)",
            )

    def prepare(self, model: nn.Module) -> None:
        self.placement.apply(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        return BranchParallel(model, self.placement)

    def full_model(self, trainer: Trainer) -> nn.Module:
        self.placement.remove(device=self.placement.fusion_device)
        return trainer.model

    def close(self) -> None:
        self.placement.remove()


@STRATEGIES.register("hybrid", doc="ddp across processes, branch placement inside each process")
class HybridStrategy(BranchStrategy):
    """DDP over a multi-device module: each process holds a placed composite (its own GPUs)."""

    name = "hybrid"

    @classmethod
    def validate(cls, spec: Spec, world: int) -> None:
        """Any number of processes; ``train.placement`` places the branches inside each."""

    def wrap(self, model: nn.Module) -> nn.Module:
        inner = BranchParallel(model, self.placement)
        if self.session.world == 1 and not dist.is_initialized():
            return inner
        return _ddp(inner, None)  # multi-device module: DDP takes device_ids=None


# -- fsdp -------------------------------------------------------------------------------------


def _fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Sharding units, innermost first: each block of a branch, then each branch.

    A branch's blocks are the layers of its ``features`` (medfuse's CNNs), else those of a
    pretrained encoder: the children of every ``Sequential``/``ModuleList`` of two or more
    layers of one type (a timm ViT's ``blocks``, a Hugging Face encoder's ``layer``, each
    ResNet stage). Each unit's parameters are gathered only while it runs."""
    units: list[nn.Module] = []
    for branch in model.branches.values():
        feats = getattr(branch, "features", None)
        if isinstance(feats, nn.Sequential) and len(feats) > 1:
            units.extend(feats)
        else:
            units.extend(_repeated_blocks(branch))
        units.append(branch)
    return units


def _repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The layers of each stack of same-type blocks (with parameters) in ``module``, outermost
    stacks only."""
    children = list(module.children())
    if (
        isinstance(module, nn.Sequential | nn.ModuleList)
        and len(children) > 1
        and len({type(c) for c in children}) == 1
        and any(True for _ in module.parameters())
    ):
        return children
    return [b for c in children for b in _repeated_blocks(c)]


def _full(v: Any) -> Any:
    # lazy: torch.distributed submodules, absent from torch builds without distributed support
    from torch.distributed.tensor import DTensor

    return v.full_tensor() if isinstance(v, DTensor) else v


def _local(v: Any) -> Any:
    """This rank's shard of a DTensor (a plain tensor as it is)."""
    # lazy: torch.distributed submodules, absent from torch builds without distributed support
    from torch.distributed.tensor import DTensor

    return v.to_local() if isinstance(v, DTensor) else v


def _install_full_state_dict(model: nn.Module) -> None:
    """Make a ``fully_shard``-ed model's ``state_dict`` hold full tensors and its
    ``load_state_dict`` accept them, so checkpoints, best-epoch restore and packages look exactly
    as in one process. Both are collective: every rank calls them (the trainer does)."""
    # lazy: torch.distributed submodules, absent from torch builds without distributed support
    from torch.distributed.tensor import DTensor, distribute_tensor

    cls = type(model)

    def state_dict(*args: Any, **kwargs: Any) -> dict[str, Any]:
        sd = cls.state_dict(model, *args, **kwargs)
        return OrderedDict((k, _full(v)) for k, v in sd.items())

    def load_state_dict(state: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        current = cls.state_dict(model)
        conv: dict[str, Any] = {}
        for k, v in state.items():
            cur = current.get(k)
            if isinstance(cur, DTensor) and not isinstance(v, DTensor):
                v = distribute_tensor(
                    v.to(cur.device), cur.device_mesh, cur.placements, src_data_rank=None
                )
            conv[k] = v
        return cls.load_state_dict(model, conv, strict=strict, assign=assign)

    object.__setattr__(model, "state_dict", state_dict)
    object.__setattr__(model, "load_state_dict", load_state_dict)


def _shard_optimizer_state(opt: torch.optim.Optimizer, *_: Any) -> None:
    """Before a step: optimizer state restored from a full checkpoint becomes sharded again."""
    # lazy: torch.distributed submodules, absent from torch builds without distributed support
    from torch.distributed.tensor import DTensor, distribute_tensor

    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st or not isinstance(p, DTensor):
                continue
            for k, v in list(st.items()):
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.dim() > 0:
                    st[k] = distribute_tensor(
                        v.to(p.device), p.device_mesh, p.placements, src_data_rank=None
                    )


@STRATEGIES.register("fsdp", doc="FSDP2 fully_shard: parameters, grads and optimizer state sharded")
class FSDPStrategy(Strategy):
    """Fully sharded data parallel (FSDP2 ``fully_shard``), for composites too big for one device.

    Each block of a branch's ``features``, each branch and the root are sharding units: a branch
    is gathered only while it runs. Checkpoints and the package hold full (unsharded) tensors.
    """

    name = "fsdp"

    @classmethod
    def validate(cls, spec: Spec, world: int) -> None:
        if spec.train.ema:
            raise SpecError(
                "train.ema",
                "weight EMA is not supported with 'fsdp' (the averaged copy would be sharded "
                "too); use 'ddp' or drop train.ema",
            )
        if spec.train.sam:
            raise SpecError(
                "train.sam",
                "sharpness-aware minimization is not supported with 'fsdp' (each process holds "
                "a shard of the gradient, not its norm); use 'ddp' or drop train.sam",
            )
        super().validate(spec, world)

    def __init__(self, session: Session) -> None:
        super().__init__(session)
        self._hook: Any = None

    def prepare(self, model: nn.Module) -> None:
        if not dist.is_initialized():
            return
        # lazy: torch.distributed submodules, absent from torch builds without distributed support
        from torch.distributed.device_mesh import init_device_mesh

        # lazy: torch.distributed submodules, absent from torch builds without distributed support
        from torch.distributed.fsdp import fully_shard

        # the model is still on the host: fully_shard moves only this rank's shards to the device
        mesh = init_device_mesh(self.session.device.type, (self.session.world,))
        units = _fsdp_units(model)
        for unit in units:
            fully_shard(unit, mesh=mesh)
        fully_shard(model, mesh=mesh)
        _install_full_state_dict(model)
        params = list(model.parameters())  # DTensors: numel() is the full size
        held = sum(_local(p).numel() for p in params)
        total = sum(p.numel() for p in params)
        log.info(
            "fsdp: %d sharding units; this rank holds %d of %d parameters (%.1f%%)",
            len(units) + 1,
            held,
            total,
            100.0 * held / max(total, 1),
        )
        # lazy: torch.distributed submodules, absent from torch builds without distributed support
        from torch.optim.optimizer import register_optimizer_step_pre_hook

        self._hook = register_optimizer_step_pre_hook(_shard_optimizer_state)

    def full_model(self, trainer: Trainer) -> nn.Module:
        if not dist.is_initialized():
            return trainer.model
        state = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
        if not self.session.is_main:
            return trainer.model

        plain = build_model(trainer.spec)
        apply_finetune(plain, trainer.spec)  # the same adapters (LoRA) to load; merged later
        plain.load_state_dict(state)
        return plain.to(self.session.device)

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


# -- the trainer in a process group -----------------------------------------------------------


class DistributedCallback(Callback):
    """The Trainer as one rank of a job: the checkpoint is read by rank 0 and broadcast (nodes
    need no shared disk), the logged train loss is the mean over ranks, the ranks' digests of an
    epoch's global batches must agree, a mid-epoch checkpoint holds every rank's order digest
    and the train-loss sums over all ranks, and FSDP optimizer state is checkpointed unsharded,
    so a checkpoint resumes with any number of processes. (A torchrun restart resumes: see
    ``Session.resume``.)"""

    def on_checkpoint_load(self, trainer: Trainer, ckpt: dict[str, Any] | None) -> Any:
        if trainer.world > 1 and dist.is_initialized():
            box = [ckpt]
            dist.broadcast_object_list(box, src=0)
            ckpt = box[0]
        return ckpt

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.world > 1 and dist.is_initialized():  # every rank saw a shard: the mean
            dev = trainer.device if trainer.device.type == "cuda" else torch.device("cpu")
            t = torch.tensor([float(record["train_loss"])], device=dev)
            dist.all_reduce(t)
            record["train_loss"] = float(t.item()) / trainer.world
            # each rank's samples and their order, and its digest of the global batches
            shares: list[Any] = [None] * trainer.world
            dist.all_gather_object(shares, (record["ranks"][0], record.get("order_sha256")))
            record["ranks"] = [share for share, _ in shares]
            digests = {digest for _, digest in shares}
            if len(digests) > 1:  # every rank computes it alone, from the same permutation
                raise MedfuseError(
                    f"{record['stage']} epoch {record['epoch']}: the ranks trained different "
                    f"global batches (order digests {sorted(map(str, digests))}); every rank "
                    "must read the same training set, in the same order, with the same spec"
                )

    def on_checkpoint_save(self, trainer: Trainer, state: dict[str, Any]) -> None:
        if "partial_order" in state and trainer.world > 1 and dist.is_initialized():
            orders: list[Any] = [None] * trainer.world  # each rank resumes its own sample order
            dist.all_gather_object(orders, state["partial_order"][0])
            state["partial_order"] = orders
            # the partial epoch's train loss: sums over all ranks, so a resume with any number
            # of processes logs the whole epoch's mean (Trainer._resume_world splits them)
            dev = trainer.device if trainer.device.type == "cuda" else torch.device("cpu")
            loss_sum, count = state["partial_loss"]
            t = torch.tensor([float(loss_sum), float(count)], dtype=torch.float64, device=dev)
            dist.all_reduce(t)
            state["partial_loss"] = (float(t[0].item()), int(round(t[1].item())))
        opt = state.get("optimizer") or {}
        if opt.get("state") and dist.is_initialized():  # fsdp: DTensor moments -> full tensors
            state["optimizer"] = {
                **opt,
                "state": {i: {k: _full(v) for k, v in s.items()} for i, s in opt["state"].items()},
            }


# -- the session ------------------------------------------------------------------------------


@dataclasses.dataclass
class Session:
    """This process's part in a (possibly distributed) training run."""

    spec: Spec
    strategy_name: str
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    restart: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    devices: dict[str, torch.device] = dataclasses.field(default_factory=dict)
    owns_group: bool = False
    launched: bool = False
    strategy: Strategy | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rank_spec(self, spec: Spec) -> Spec:
        """The spec one rank trains with: ``train.batch_size`` is the global batch, split evenly."""
        bs = spec.train.batch_size
        if self.world == 1:
            return spec
        if bs % self.world:
            raise SpecError(
                "train.batch_size",
                f"is the global batch, split evenly over {self.world} processes; {bs} is not "
                f"divisible by {self.world}. Use a multiple of {self.world}, e.g. "
                f"{max(1, round(bs / self.world)) * self.world}",
            )
        d = spec.to_dict()
        d["train"]["batch_size"] = bs // self.world
        return parse_spec(d)

    def trainer(
        self,
        model: nn.Module,
        spec: Spec,
        train: Tensors,
        val: Tensors,
        *,
        workdir: Path | None = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> Trainer:
        """A Trainer for this rank, with the strategy's wrapping, placement or sharding applied."""
        assert self.strategy is not None
        rank_spec = self.rank_spec(spec)
        self.strategy.prepare(model)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if self.launched:
            callbacks.insert(0, DistributedCallback())
        with _kept_in_place(model, isinstance(self.strategy, BranchStrategy)):
            trainer = Trainer(
                model,
                rank_spec,
                train,
                val,
                device=self.device,
                workdir=workdir,
                progress=progress,
                rank=self.rank,
                world=self.world,
                wrap=self.strategy.wrap,
                callbacks=callbacks,
                **kwargs,
            )
        return trainer

    def resume(self, asked: bool) -> bool:
        """Whether to resume: when asked, and always after a torchrun restart of this job."""
        return asked or self.restart > 0

    def finish(self, trainer: Trainer, *, end: bool = True) -> nn.Module | None:
        """The trained plain model on rank 0 (``None`` on the other ranks); ends the group unless
        ``end`` is false (an ensemble member with more members to train)."""
        assert self.strategy is not None
        model = self.strategy.full_model(trainer)
        self.strategy.close()
        if end:
            self.end()
        return model if self.is_main else None

    def end(self) -> None:
        """End the process group this session started (a no-op otherwise, or when ended)."""
        if self.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def agree(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a decision only rank 0's disk can make)."""
        if self.world > 1 and dist.is_initialized():
            box = [obj]
            dist.broadcast_object_list(box, src=0)
            return box[0]
        return obj

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
        if self.world > 1 and dist.is_initialized():
            out: list[Any] = [None] * self.world
            dist.all_gather_object(out, obj)
            return out
        return [obj]

    def record(self) -> dict[str, Any]:
        """What the package's training record says about how it was trained."""
        out: dict[str, Any] = {"strategy": self.strategy_name, "world_size": self.world}
        if self.devices and self.strategy_name in ("branch", "hybrid"):
            out["placement"] = {k: str(v) for k, v in self.devices.items()}
        return out


@contextlib.contextmanager
def _kept_in_place(model: nn.Module, active: bool) -> Iterator[None]:
    """While the Trainer is built, its ``model.to(device)`` leaves a placed model where it is."""
    if not active:
        yield
        return
    object.__setattr__(model, "to", lambda *_a, **_k: model)
    try:
        yield
    finally:
        object.__delattr__(model, "to")


def _process_device(device: str | None, env: DistEnv | None, per_process: int) -> torch.device:
    dev = resolve_device(device)
    if env is None or dev.type != "cuda":
        return dev
    if dev.index is not None and env.local_world > 1:
        raise MedfuseError(
            f"--device {device}: with {env.local_world} processes per node each process takes "
            "its own GPU (cuda:LOCAL_RANK); pass --device cuda or auto"
        )
    count = torch.cuda.device_count()
    # (a placement wider than the node even for one process: resolve_placement names its entry)
    if dev.index is None and per_process <= count < env.local_world * per_process:
        each = "one each" if per_process == 1 else f"{per_process} each, for the placement"
        most = count // per_process
        raise MedfuseError(
            f"--device {device or 'auto'}: {env.local_world} processes per node take "
            f"{env.local_world * per_process} GPUs ({each}), but PyTorch sees {count}; run "
            f"--nproc {most} or fewer per node, or pass --device cpu"
        )
    index = dev.index if dev.index is not None else env.local_rank * per_process
    return torch.device("cuda", index)


def start_session(spec: Spec, device: str | None = "auto") -> Session:
    """Set up this process for ``spec.train.strategy``: pick its device (``cuda:LOCAL_RANK``
    under torchrun), join the process group (NCCL on CUDA, gloo on CPU), check the strategy and
    placement. Plain single-process runs get a session that changes nothing."""
    name = spec.train.strategy
    STRATEGIES.get(name, path="train.strategy")
    env = launched_env()
    if env is not None and env.world > 1 and name == "single":
        name = "ddp"  # launched with several processes: data parallel is what was meant
    if env is None and name in _ONE_PROCESS_FALLBACK:
        fallback = _ONE_PROCESS_FALLBACK[name]
        log.info(
            "strategy %r in one process trains as %r; start several with --nproc N or torchrun",
            name,
            fallback,
        )
        name = fallback
    STRATEGIES.get(name).validate(spec, env.world if env is not None else 1)
    per_process = devices_per_process(spec.train.placement) if name == "hybrid" else 1
    dev = _process_device(device, env, per_process)
    devices: dict[str, torch.device] = {}
    if name in ("branch", "hybrid"):
        offset = env.local_rank * per_process if (env is not None and dev.type == "cuda") else 0
        devices = resolve_placement(spec.train.placement, list(spec.modalities), dev, offset=offset)
        dev = devices["fusion"]
    session = Session(spec, name, device=dev, devices=devices)
    if env is not None:
        session.rank, session.world = env.rank, env.world
        session.local_rank, session.restart = env.local_rank, env.restart
        session.launched = True
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend, device_id=dev if dev.type == "cuda" else None)
            session.owns_group = True
        if not session.is_main:  # only rank 0 logs
            logging.getLogger("medfuse").setLevel(logging.WARNING)
        log.info(
            "rank %d/%d on %s, strategy %s%s",
            env.rank,
            env.world,
            dev,
            name,
            f" (restart {env.restart})" if env.restart else "",
        )
    session.strategy = STRATEGIES.get(name)(session)
    return session
