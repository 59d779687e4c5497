"""FSDP as `trainer=fsdp` uses it: Lightning's FSDPStrategy plus two things it lacks here.

1. After fit the LightningModule holds its full, unwrapped weights on every rank. Lightning tears the strategy
   down *before* `on_fit_end`, where DiffusionModule exports its pipeline on rank 0 only; a still-sharded
   module there would export shards (or hang in an all-gather only rank 0 joins). DDP unwraps at teardown
   too; this does the same for FSDP, gathering once, collectively, while every rank is still in teardown.
2. Gradient clipping by norm (`trainer.gradient_clip_val`, which the diffusion experiments set) goes
   through FSDP's sharded `clip_grad_norm_`; Lightning's FSDPPrecision refuses it.
3. It runs on CPU processes with gloo (`trainer=fsdp_cpu`): Lightning's accelerator connector refuses
   `type(strategy) is FSDPStrategy` without a GPU, but torch's FSDP itself supports CPU (device_id=None),
   which Lightning's strategy already passes. Subclassing is what lifts that one check.
4. On CPU, the full optimizer state dict (state_dict_type: full) is gathered without FSDP's CPU offload, which
   there would alias every state to one reused buffer (`full_optim_state_dict`).
"""

from __future__ import annotations

import functools

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import FSDPStrategy as LightningFSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn

WRAPPED_PREFIX = "_fsdp_wrapped_module."


def clean_name(name: str) -> str:
    """A parameter name as the unwrapped module spells it (FSDP inserts `_fsdp_wrapped_module.`)."""
    return name.replace(WRAPPED_PREFIX, "")


def block_wrap_policy(class_names: list[str]):
    """An FSDP auto-wrap policy over module classes named in config (diffusers blocks for the UNet): each
    block becomes one FSDP unit, so its all-gather overlaps the previous block's compute."""
    import diffusers.models.attention as attention
    import diffusers.models.resnet as resnet
    import diffusers.models.transformers.transformer_2d as transformer_2d
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    modules = (attention, resnet, transformer_2d)
    classes = {getattr(m, n) for n in class_names for m in modules if hasattr(m, n)}
    missing = set(class_names) - {c.__name__ for c in classes}
    if missing:
        raise ValueError(f"FSDP wrap policy: no diffusers class named {', '.join(sorted(missing))}")
    return ModuleWrapPolicy(classes)


def clip_grad_norm(model: torch.nn.Module, optimizer: object, clip_val: float) -> None:
    """trainer.gradient_clip_val under FSDP: the norm of the full gradient, computed across the shards by
    FSDP's own clip_grad_norm_ (Lightning's FSDPPrecision refuses gradient_clip_algorithm='norm')."""
    model.clip_grad_norm_(clip_val)


def unwrap_fsdp(root: torch.nn.Module, module: torch.nn.Module) -> None:
    """Replace FSDP-wrapped children of `module` by their inner modules and give every parameter its full
    value (gathered from all ranks: call on every rank). Frozen parameters keep requires_grad=False."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    with FSDP.summon_full_params(root, writeback=False, rank0_only=False):
        full = {clean_name(n): p.detach().clone() for n, p in module.named_parameters()}
    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, FSDP):
                setattr(parent, child_name, child.module)
    for name, param in list(module.named_parameters()):
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        value = full[clean_name(name)]
        owner.register_parameter(leaf, torch.nn.Parameter(value, requires_grad=param.requires_grad))


def full_optim_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rank: int) -> dict:
    """The optimizer's full (unsharded) state dict keyed by parameter id, on rank 0 (call on every rank), as
    Lightning's FSDPStrategy saves it, except that on a CPU compute device it asks FSDP not to offload to CPU.

    FSDP gathers each state (Adam's exp_avg, then exp_avg_sq) of a flat parameter into one buffer it reuses for
    the next state, and relies on the copy that either offloading (`.cpu()`) or, without offloading, a clone
    makes. With the buffer already on the CPU, `.cpu()` copies nothing: every state then aliases the buffer and
    ends up holding the last state gathered (exp_avg == exp_avg_sq, one storage), so a resumed run restarts with
    a wrong first moment. Without offloading FSDP clones; the states are on the CPU either way."""
    from torch.distributed.fsdp import (
        FullOptimStateDictConfig,
        FullStateDictConfig,
        OptimStateKeyType,
        StateDictType,
    )
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    offload = torch.device(model.compute_device).type != "cpu"
    with FSDP.state_dict_type(
        model,
        StateDictType.FULL_STATE_DICT,
        FullStateDictConfig(offload_to_cpu=True, rank0_only=True),
        FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True),
    ):
        state = FSDP.optim_state_dict(model, optimizer)
        if rank == 0:  # the standard format, as Lightning stores it (its load_checkpoint rekeys it back)
            state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, model)
    return state


class FSDPStrategy(LightningFSDPStrategy):
    """Lightning's FSDPStrategy; on CPU wrapped with device_id=cpu, and unwrapped with full weights after fit."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        if self.root_device.type == "cpu" and not any(isinstance(m, FSDP) for m in model.modules()):
            # Lightning passes device_id=root_device.index (None on CPU), and torch's FSDP then looks for an
            # accelerator; an explicit CPU device is what torch's FSDP needs to run on gloo.
            kwargs = {k: v for k, v in self.kwargs.items()}
            model = FSDP(module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                         sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **kwargs)  # fmt: skip
            self.kwargs.pop("auto_wrap_policy", None)  # applied above; Lightning would warn it is ignored
        model = super()._setup_model(model)
        self.precision_plugin.clip_grad_by_norm = functools.partial(clip_grad_norm, model)
        return model

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        if self._state_dict_type != "full" or self.root_device.type != "cpu":
            return super().optimizer_state(optimizer)
        if isinstance(optimizer, LightningOptimizer):
            optimizer = optimizer._optimizer
        return full_optim_state_dict(self.model, optimizer, self.global_rank)

    def teardown(self) -> None:
        module = self.lightning_module
        fitting = (
            module is not None
            and module._trainer is not None
            and module._trainer.state.fn == TrainerFn.FITTING
        )
        if fitting and self.model is not None and self.model is not module:
            unwrap_fsdp(self.model, module)
            self.model = module
        super().teardown()
