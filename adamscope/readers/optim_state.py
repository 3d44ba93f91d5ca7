"""torch optimizer state_dicts, as every torch-pickle family stores them: checks (is it Adam?),
hyper-parameters, names of the param ids, and `iter_adam_states`, which yields the TensorStates.

Layout (FORMATS.md): `{'state': {id: {'step', 'exp_avg', 'exp_avg_sq'[, 'max_exp_avg_sq']}},
'param_groups': [{'params': [ids], 'lr', 'betas', ...}]}`; ids are positions in the concatenation of
the groups' `params` lists and `state` holds only the parameters that were stepped.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from adamscope.config import ReaderOptions
from adamscope.errors import (
    CorruptCheckpointError,
    NamingError,
    NotAdamError,
    UnsupportedFormatError,
)
from adamscope.readers.guard import brief
from adamscope.readers.naming import (
    align_names,
    is_tensor_like,
    parameter_candidates,
    strip_compile_prefix,
)
from adamscope.readers.quantized import adam_entry
from adamscope.vocab import CheckpointInfo, HyperParams, TensorState

log = logging.getLogger(__name__)

# state keys of other optimizers -> what the file holds instead of Adam (checked in order)
_NOT_ADAM = (
    (
        ("exp_avg_sq_row", "exp_avg_sq_col"),
        "Adafactor (exp_avg_sq_row/col): not Adam, no per-element v",
    ),
    (("exp_avg_sq_row",), "Adafactor (exp_avg_sq_row/col): not Adam, no per-element v"),
    (("momentum_buffer",), "SGD state (momentum_buffer)"),
    (
        ("state1",),
        "bitsandbytes state with one moment (state1 only: 8-bit Lion, Momentum, RMSprop, "
        "Adagrad or LARS)",
    ),
    (("row_var",), "Adafactor (torch.optim: row_var/col_var/variance): not Adam, no exp_avg"),
    (("exp_inf",), "Adamax state (exp_inf: an infinity-norm, not a second moment)"),
    (("square_avg",), "RMSprop/Adadelta state (square_avg)"),
    (("sum",), "Adagrad state (sum: an accumulated, not averaged, second moment)"),
    (("prev", "step_size"), "Rprop state (prev, step_size)"),
    (("exp_avg",), "exp_avg without exp_avg_sq (Lion-like)"),
)
# group keys of optimizers that may keep no state at all (SGD without momentum), checked in order
_NOT_ADAM_GROUPS = (
    (("momentum", "nesterov", "dampening"), "SGD (momentum, nesterov in its param_groups)"),
    (("lr_decay", "initial_accumulator_value"), "Adagrad (lr_decay in its param_groups)"),
    (("alpha", "centered"), "RMSprop (alpha, centered in its param_groups)"),
    (("beta2_decay",), "Adafactor (beta2_decay in its param_groups)"),
)
# group keys torch.optim writes for every optimizer built on its Optimizer base (torch >= 1.11);
# torch's Adam/AdamW always also store 'amsgrad', its RAdam never does
_TORCH_GROUP_MARKERS = ("foreach", "differentiable", "capturable")


def is_optim_state_dict(obj: Any) -> bool:
    """True for something shaped like `optimizer.state_dict()`."""
    return (
        isinstance(obj, dict)
        and isinstance(obj.get("state"), dict)
        and isinstance(obj.get("param_groups"), list | tuple)
    )


def group_ids(optim_sd: dict, *, source: str) -> list[list[Any]]:
    """The `params` list of each param group (ids, or names for some FSDP state dicts)."""
    groups = []
    for g, group in enumerate(optim_sd["param_groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list | tuple):
            raise CorruptCheckpointError(f"{source}: param_groups[{g}] has no 'params' list")
        groups.append(list(group["params"]))
    return groups


def param_names_from_groups(optim_sd: dict) -> list[str] | None:
    """Names stored by torch >= 2.6 when the optimizer was built from named_parameters()."""
    names: list[str] = []
    for group in optim_sd["param_groups"]:
        group_names = group.get("param_names") if isinstance(group, dict) else None
        params = group.get("params") if isinstance(group, dict) else None
        if not isinstance(group_names, list | tuple) or not isinstance(params, list | tuple):
            return None
        if len(group_names) != len(params):
            return None
        names.extend(strip_compile_prefix(str(n)) for n in group_names)
    return names


def adam_state(optim_sd: dict, *, source: str) -> dict[Any, Any]:
    """`optim_sd['state']` with each entry in Adam's keys: bitsandbytes' state1/state2 (8-bit
    codes or float32) as lazy exp_avg/exp_avg_sq (readers/quantized.py); other entries as stored."""
    return {pid: adam_entry(e, source=source, pid=pid) for pid, e in optim_sd["state"].items()}


def state_shapes(optim_sd: dict, *, source: str) -> list[list[tuple[int, ...] | None]]:
    """Per group, the exp_avg shape of each id (None for ids that were never stepped)."""
    state = adam_state(optim_sd, source=source)
    return [
        [_shape_of(state.get(pid)) for pid in ids] for ids in group_ids(optim_sd, source=source)
    ]


def _shape_of(entry: Any) -> tuple[int, ...] | None:
    if isinstance(entry, dict) and is_tensor_like(entry.get("exp_avg")):
        return tuple(entry["exp_avg"].shape)
    return None


def check_adam(optim_sd: dict, *, source: str) -> None:
    """Raises NotAdamError / UnsupportedFormatError unless `state` holds Adam/AdamW moments.

    Adam-like optimizers with other update rules are told apart where the file allows: NAdam stores
    `mu_product` (and `momentum_decay` in its groups); torch's RAdam stores exactly Adam's state
    keys but its groups, unlike Adam's and AdamW's, have no `amsgrad` — detectable only for groups
    written by torch.optim (they carry `foreach`/`differentiable`). An RAdam state written by other
    code, or by torch < 1.11, cannot be told apart from Adam's and is read as Adam.
    """
    entries = [e for e in adam_state(optim_sd, source=source).values() if isinstance(e, dict)]
    groups = [g for g in optim_sd["param_groups"] if isinstance(g, dict)]
    if not any(entries) and "betas" not in {k for g in groups for k in g}:
        for needed, what in _NOT_ADAM_GROUPS:  # SGD without momentum stores no state at all
            if any(all(k in g for k in needed) for g in groups):
                raise NotAdamError(f"{source}: not Adam/AdamW: {what}, no Adam state")
    if not entries:
        raise UnsupportedFormatError(
            f"{source}: the optimizer has no state (never stepped?): nothing to analyse"
        )
    keys = set().union(*(e.keys() for e in entries))
    if "mu_product" in keys or any("momentum_decay" in g for g in groups):
        raise NotAdamError(
            f"{source}: not Adam/AdamW: NAdam state (mu_product/momentum_decay); its update "
            "uses Nesterov momentum, so u = m_hat/(sqrt(v_hat)+eps) is not what it applied"
        )
    if "exp_avg" in keys and "exp_avg_sq" in keys:
        radam = [
            g for g in groups if "amsgrad" not in g and any(k in g for k in _TORCH_GROUP_MARKERS)
        ]
        if radam and "exp_inf" not in keys:
            raise NotAdamError(
                f"{source}: not Adam/AdamW: RAdam state (torch.optim param_groups without "
                "'amsgrad'); its rectified update differs from Adam's"
            )
    if any("exp_avg" in e and "exp_avg_sq" in e for e in entries):
        return
    for needed, message in _NOT_ADAM:
        if all(k in keys for k in needed):
            raise NotAdamError(f"{source}: not Adam/AdamW: {message}")
    raise NotAdamError(
        f"{source}: not Adam/AdamW: optimizer state has no exp_avg/exp_avg_sq (found "
        f"{', '.join(sorted(map(str, keys)))})"
    )


def _number(x: Any, *, what: str, source: str) -> float:
    if is_tensor_like(x):
        return float(x.item())
    if isinstance(x, int | float):
        return float(x)
    raise CorruptCheckpointError(f"{source}: {what} is {type(x).__name__}, expected a number")


def hyper_params(group: dict, *, source: str, options: ReaderOptions | None = None) -> HyperParams:
    """HyperParams of one param group; ReaderOptions fill in betas/eps the file does not store."""
    opts = options or ReaderOptions()
    betas = group.get("betas")
    if betas is None and opts.beta1 is not None and opts.beta2 is not None:
        betas = (opts.beta1, opts.beta2)
    eps = group.get("eps", opts.eps)
    if betas is None or eps is None:
        raise CorruptCheckpointError(
            f"{source}: param group without betas/eps; pass --beta1/--beta2/--eps"
        )
    if not isinstance(betas, list | tuple) or len(betas) != 2:
        raise CorruptCheckpointError(
            f"{source}: param group betas is {brief(betas, 40)}, not a pair"
        )
    b1, b2 = (_number(b, what="betas", source=source) for b in betas)
    lr = group.get("lr")
    wd = group.get("weight_decay")
    bias_correction = group.get("bias_correction", True)
    if opts.bias_correction is not None:
        bias_correction = opts.bias_correction
    dwd = group.get("decoupled_weight_decay")
    return HyperParams(
        beta1=b1,
        beta2=b2,
        eps=_number(eps, what="eps", source=source),
        lr=None if lr is None else _number(lr, what="lr", source=source),
        weight_decay=None if wd is None else _number(wd, what="weight_decay", source=source),
        amsgrad=bool(group.get("amsgrad", False)),
        bias_correction=bool(bias_correction),
        eps_inside_sqrt=bool(group.get("eps_inside_sqrt", False)),
        maximize=bool(group.get("maximize", False)),
        decoupled_weight_decay=None if dwd is None else bool(dwd),
    )


def iter_adam_states(
    optim_sd: dict,
    names: Sequence[str],
    *,
    source: str,
    options: ReaderOptions | None = None,
) -> Iterator[TensorState]:
    """Yield one TensorState per stepped parameter, in id order.

    Args:
        optim_sd: a (lazy) optimizer state_dict; tensors are LazyTensor / InMemoryTensor.
        names: names[i] is the name of param id i (position in the concatenated groups' params).
        source: the file, for error messages.
        options: fills in hyper-parameters the file lacks.

    Raises:
        NotAdamError: the state holds no exp_avg/exp_avg_sq (SGD, Adafactor, ...).
        UnsupportedFormatError: there is no optimizer state at all.
        NamingError: `names` does not have one entry per param id.
    """
    if not is_optim_state_dict(optim_sd):
        raise UnsupportedFormatError(f"{source}: no optimizer state_dict (state + param_groups)")
    check_adam(optim_sd, source=source)
    ids_per_group = group_ids(optim_sd, source=source)
    n_ids = sum(len(ids) for ids in ids_per_group)
    if len(names) != n_ids:
        raise NamingError(f"{source}: {len(names)} names for {n_ids} optimizer parameters")
    state = adam_state(optim_sd, source=source)
    position, skipped = 0, 0
    for group, ids in zip(optim_sd["param_groups"], ids_per_group, strict=True):
        hp = hyper_params(group, source=source, options=options)
        for pid in ids:
            name = names[position]
            position += 1
            entry = state.get(pid)
            if entry is None:
                skipped += 1
                continue
            yield _tensor_state(entry, group, name, hp, source=source)
    if skipped:
        log.info(
            "%s: %d parameters have no optimizer state (never stepped/frozen)", source, skipped
        )


_NOT_MOMENTS = frozenset({"bool"})


def _tensor_state(
    entry: dict, group: dict, name: str, hp: HyperParams, *, source: str
) -> TensorState:
    m, v = entry.get("exp_avg"), entry.get("exp_avg_sq")
    if not (is_tensor_like(m) and is_tensor_like(v)):
        raise NotAdamError(f"{source}: state of '{name}' has no exp_avg/exp_avg_sq tensors")
    for what, t in (("exp_avg", m), ("exp_avg_sq", v)):
        dt = str(getattr(t, "dtype_name", "") or "")
        if dt in _NOT_MOMENTS or dt.startswith(("int", "uint", "complex")):
            # Adam's moments are floating point (or one of the quantized schemes the readers
            # decode, which have their own dtype names): integers, booleans or complex numbers
            # are not Adam state, and reading them as such would give numbers without meaning
            raise NotAdamError(
                f"{source}: '{name}' {what} is {dt}, not a floating-point Adam moment"
            )
    if tuple(m.shape) != tuple(v.shape):
        raise CorruptCheckpointError(
            f"{source}: '{name}' exp_avg {tuple(m.shape)} and exp_avg_sq {tuple(v.shape)} differ"
        )
    for what, t in (("exp_avg", m), ("exp_avg_sq", v)):
        check_dense(t, source=source, what=f"'{name}' {what}")
    notes: list[str] = []
    vmax = entry.get("max_exp_avg_sq") if hp.amsgrad else None
    if hp.amsgrad and not is_tensor_like(vmax):
        notes.append("amsgrad set but no max_exp_avg_sq stored; using exp_avg_sq")
        log.warning("%s: '%s': %s", source, name, notes[-1])
        vmax = None
    if vmax is not None and tuple(vmax.shape) != tuple(m.shape):
        raise CorruptCheckpointError(
            f"{source}: '{name}' max_exp_avg_sq {tuple(vmax.shape)} and exp_avg "
            f"{tuple(m.shape)} differ"
        )
    step = entry.get("step", group.get("step"))
    if step is None:
        raise CorruptCheckpointError(f"{source}: '{name}' has no step in its state or group")
    step_value = _number(step, what=f"step of '{name}'", source=source)
    if not (math.isfinite(step_value) and step_value >= 0):
        raise CorruptCheckpointError(f"{source}: '{name}' has step {step_value}")
    return TensorState(
        name=name,
        shape=tuple(m.shape),
        step=step_value,
        hp=hp,
        dtype=m.dtype_name,
        chunks=_chunker(m, v, vmax, name=name, source=source),
        notes=notes,
        v_dtype=None if v.dtype_name == m.dtype_name else v.dtype_name,
    )


def check_dense(t: Any, *, source: str, what: str) -> None:
    """Raises CorruptCheckpointError when two elements of tensor `t` share storage: optimizer
    state is dense, and zero or overlapping strides would let a tiny file claim a huge tensor
    (4 bytes as 2^36 elements) and stream for hours."""
    if not _non_overlapping(tuple(t.shape), tuple(getattr(t, "stride", ()))):
        raise CorruptCheckpointError(
            f"{source}: {what} has overlapping strides {tuple(t.stride)} for shape "
            f"{tuple(t.shape)}: not a saved optimizer state"
        )


def _non_overlapping(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """True when no two elements share storage (dense, possibly permuted); unknown strides pass."""
    if len(stride) != len(shape):
        return True
    span = 1
    for size, st in sorted(
        ((s, abs(st)) for s, st in zip(shape, stride, strict=True) if s > 1), key=lambda x: x[1]
    ):
        if st < span:
            return False
        span = st * size
    return True


def _chunker(m: Any, v: Any, vmax: Any, *, name: str, source: str) -> Any:
    def chunks(n: int) -> Iterator[tuple[int, Any, Any, Any]]:
        if n < 1:
            raise ValueError("chunk size must be >= 1")
        total = m.numel
        for start in range(0, total, n):
            stop = min(start + n, total)
            v_chunk = v.read(start, stop)  # negative entries: the engine refuses them
            yield (
                start,
                m.read(start, stop),
                v_chunk,
                None if vmax is None else vmax.read(start, stop),
            )

    return chunks


def max_step(optim_sd: dict) -> int | None:
    """The largest stored step (the optimizer's step count), or None."""
    steps = []
    for entry in optim_sd["state"].values():
        s = entry.get("step") if isinstance(entry, dict) else None
        if s is not None:
            steps.append(float(s.item()) if is_tensor_like(s) else float(s))
    steps = [s for s in steps if math.isfinite(s)]
    return int(max(steps)) if steps else None


def optim_info(
    path: Path, optim_sd: dict, *, fmt: str, step: int | None, notes: Sequence[str] = ()
) -> CheckpointInfo:
    """CheckpointInfo from an optimizer state_dict, without reading tensor data."""
    entries = [
        e
        for e in adam_state(optim_sd, source=str(path)).values()
        if isinstance(e, dict) and is_tensor_like(e.get("exp_avg"))
    ]
    return CheckpointInfo(
        path=path,
        format=fmt,
        step=step if step is not None else max_step(optim_sd),
        n_tensors=len(entries),
        n_params=sum(e["exp_avg"].numel for e in entries),
        bytes_on_disk=path.stat().st_size if path.is_file() else 0,
        notes=tuple(notes),
    )


def names_from_model(
    optim_sd: dict, entries: Sequence[tuple[str, Any]], *, source: str, what: str = "the optimizer"
) -> list[str]:
    """Names of an optimizer's param ids from the model state_dict saved beside it.

    Uses `param_names` when stored. Otherwise two layouts are tried against the model's candidate
    tensors (see naming.parameter_candidates), each accepted only if its shape placement is unique:
    "order" — the concatenated groups are a subsequence of the model's parameter order (one group,
    or groups that split parameters in order: Lightning's default, most training scripts) — and,
    with two groups, "dim split" — group 0 = parameters with dim >= 2, group 1 = dim < 2, each in
    model order (nanoGPT's configure_optimizers). If both fit with different answers: NamingError.
    """
    stored = param_names_from_groups(optim_sd)
    if stored is not None:
        return stored
    candidates, _ = parameter_candidates(entries)
    shapes = state_shapes(optim_sd, source=source)
    results: dict[str, list[str]] = {}
    errors: list[NamingError] = []
    if len(shapes) == 2:
        try:
            big = [c for c in candidates if len(c[1].shape) >= 2]
            small = [c for c in candidates if len(c[1].shape) < 2]
            results["dim split"] = align_names(
                shapes[0], big, source=source, what=f"{what}, group 0 (dim >= 2)"
            ) + align_names(shapes[1], small, source=source, what=f"{what}, group 1 (dim < 2)")
        except NamingError as e:
            errors.append(e)
    try:
        flat = [s for group in shapes for s in group]
        results["order"] = align_names(flat, candidates, source=source, what=what)
    except NamingError as e:
        errors.append(e)
    answers = {tuple(v) for v in results.values()}
    if len(answers) == 1:
        return next(iter(results.values()))
    if len(answers) > 1:
        raise NamingError(
            f"{source}: {what}: both the model-order and the dim-split layouts fit the shapes with "
            "different names; save the optimizer built from named_parameters() (torch >= 2.6)"
        )
    raise errors[0]
