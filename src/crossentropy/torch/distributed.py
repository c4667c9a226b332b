r"""Vocabulary-parallel and data-parallel losses over :mod:`torch.distributed`.

When the output layer is too large for one device, tensor parallelism splits it by
vocabulary: rank ``r`` of a process group holds the logits (or the weight rows) of a
contiguous slice ``[start_r, stop_r)`` of the ``C`` classes, in group-rank order.  The
slices may be uneven, even empty.  The losses here compute exactly what
:func:`crossentropy.torch.cross_entropy` and
:func:`crossentropy.torch.linear_cross_entropy` compute on the whole vocabulary -- label
smoothing spreads ``eps / C`` over the **global** ``C``, the z-loss uses the global
``logsumexp`` -- and return the same (replicated) loss on every rank.

* :func:`vocab_parallel_cross_entropy` -- from a ``(..., C_r)`` logits shard; class
  indices, or probability targets sharded like the logits; class weights sharded too.
* :func:`vocab_parallel_linear_cross_entropy` -- fused ``hidden @ weight_shard.T`` and
  cross-entropy, chunked over tokens: never more than one ``(chunk, C_r)`` block of logits.
* :func:`global_token_count` -- the divisor that makes data-parallel gradient accumulation
  exact (``normalize_by=``).

Communication budget
--------------------
Per call, with ``N`` tokens, ``P`` ranks and ``D`` the hidden size, the collectives are:

1. ``all_gather`` of a 1 KiB descriptor per rank (independent of ``N``) -- forward,
   when the ranks agree (``agree``: by default unless ``vocab_sizes`` is given; always
   with ``validate=True``);
2. ``all_reduce`` MAX of ``N`` floats, the per-token maxima of the local slices --
   forward;
3. ``all_reduce`` SUM of ``k N`` floats, the packed per-token sums: sum-exp and target
   logit (``k = 2``), plus the sum of the logits with label smoothing and ``w_y`` with
   class weights (and one scalar, the total class weight, with both); for probability
   targets sum-exp, ``sum_c t_c`` and ``sum_c t_c z_c`` (``k = 3``) -- forward;
4. ``all_reduce`` SUM of the ``N x D`` hidden gradient (in float32, float64 for float64
   inputs) -- backward of the fused loss only;
5. ``all_reduce`` SUM of ``N`` floats, the target row sums -- only with ``validate=True``
   and probability targets.

So the forward pass makes at most two collectives whose size grows with ``N`` (``k`` is
2 to 4), the dense backward makes none (every term of ``dloss/dz_c`` is local once the
token's ``lse`` is known), and the fused backward adds only the hidden-gradient
all-reduce.  Nothing of size ``N x C`` is ever communicated.  The floor for the fused
loss is the hidden gradient (``D`` floats a token), which every rank holds a partial sum
of, plus one float a token for the softmax normaliser: ``D + 1``, against the ``D + 3``
(``D + 4`` with smoothing) sent here.  The tests count the collectives.

Memory: the dense loss saves the caller's logits shard (no copy) and ``O(N)``
statistics -- never a softmax; backward recomputes ``exp(z - lse)`` straight into the
gradient buffer.  Its chunks of tokens follow the one ``chunk_size=None`` rule of
:func:`crossentropy.torch.linear_cross_entropy` with the slice's width (64 MiB of
compute-dtype blocks); so do the fused loss's.
The fused loss saves its inputs and ``lse``; it recomputes the logits in backward, one
chunk at a time, so its FLOPs are ``8 N D C_r`` per rank rather than the single-process
``6 N D C`` -- the price of two collectives in all rather than two per chunk.

Consistency and errors
----------------------
With ``agree`` on (the default unless ``vocab_sizes`` is given), every call starts with
one ``all_gather`` of a 1 KiB descriptor per rank: its slice size, batch shape, dtype,
options, any error its own argument checks raised and what its local data checks found.
Every rank then checks the same gathered table, so a wrong shape, a wrong slice, options
that differ between ranks, or a bad argument on one rank raise the same ``ValueError``
(or ``TypeError``) on every rank, naming the rank, instead of leaving the others hanging
in a collective.  The slice bounds come from the same gather.  The descriptor is read on
the host, which synchronises with the device; pass ``vocab_sizes`` (fixed for a model)
for the synchronisation-free path (``agree=False``, its default then), where a rank with
a wrong call fails alone and the others may wait for it, as with any collective.

``validate`` has the meaning it has in every function of the library: the default
``None`` runs the data checks that cost no host synchronisation -- here the local ones
on CPU tensors (labels in ``[0, C)``, probabilities finite and non-negative), reported
through the descriptor so that every rank raises alike, hence only when the ranks agree;
``True`` runs every data check, the cross-rank ones too (labels equal on every rank,
probabilities summing to 1 over the whole vocabulary: one more ``all_reduce``), and
implies the exchange; ``False`` none.

Data parallelism and gradient accumulation
------------------------------------------
Averaging each micro-batch's loss and then averaging over steps and ranks weights tokens
unequally when micro-batches have different numbers of counted tokens.  The exact rule
divides the **sum** over all tokens of all micro-batches on all data-parallel ranks by
their number::

    n = global_token_count(micro_targets, group=dp_group)     # one all_reduce, a scalar
    for hidden, target in micro_batches:
        loss = vocab_parallel_linear_cross_entropy(hidden, w_shard, target,
                                                   group=tp_group, normalize_by=n)
        loss.backward()                                        # gradients accumulate
    # then SUM the gradients over dp_group

after which every rank holds the gradient of the mean loss of one big batch.  DDP and FSDP
*average* gradients over their ``M`` ranks instead of summing them; with those, pass
``normalize_by=n / M``.  With tensor and data parallelism together, count over the
data-parallel group only (every rank of a tensor-parallel group sees the same tokens).
``global_token_count`` counts tokens; with class weights the single-process ``mean``
divides by the sum of ``w_y`` instead.

DTensor
-------
A :class:`~torch.distributed.tensor.DTensor` on a one-dimensional device mesh is accepted
where it fits naturally: logits (and probability targets) placed ``Shard(-1)``, a weight
(and bias) placed ``Shard(0)``, and class-index targets or hidden states placed
``Replicate()``.  They are unwrapped with ``to_local()`` (which is differentiable, so
gradients come back as DTensors with the same placement) and the mesh's group is used;
the loss is returned as a plain tensor, the same on every rank.  Other layouts (uneven
hand-made shards of a DTensor, multi-dimensional meshes) are refused with a
``ValueError``: use the local tensors and ``group=`` instead.

Launching with ``torchrun``
---------------------------
One process per device; ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous, so the script only initialises the default group::

    # train.py
    import os, torch, torch.distributed as dist
    from crossentropy.torch.distributed import vocab_parallel_linear_cross_entropy

    dist.init_process_group("nccl")            # "gloo" for CPU processes
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    vocab, dim = 128256, 4096
    sizes = [vocab // world + (r < vocab % world) for r in range(world)]
    start = sum(sizes[:rank])
    w_shard = full_weight[start:start + sizes[rank]].cuda().requires_grad_()
    loss = vocab_parallel_linear_cross_entropy(hidden, w_shard, target,
                                               vocab_sizes=sizes)
    loss.backward()                            # hidden.grad is summed over the group
    dist.destroy_process_group()

    $ torchrun --standalone --nproc-per-node=8 train.py
    $ torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d \
          --rdzv-endpoint=host0:29500 train.py        # on each of two nodes

``group=`` takes any subgroup from :func:`torch.distributed.new_group` (for example the
tensor-parallel group of a 2-D layout); the hidden states and class-index targets must be
the same on every rank of it.  ``benchmarks/bench_distributed.py`` is such a script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from . import _checks, _distill, _functional, _parallel, _reduction, _stats
from . import _parallel_functions as functions
from ._distill import Teacher, TopK
from ._functional import stats_result
from ._options import Options, compute_dtype
from ._stats import TokenStats

__all__ = [
    "global_token_count",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_linear_distillation_loss",
    "vocab_parallel_linear_token_stats",
]


def global_token_count(
    target: torch.Tensor | Sequence[torch.Tensor],
    *,
    ignore_index: int = -100,
    group: Any = None,
) -> torch.Tensor:
    r"""Number of counted tokens over several micro-batches and all ranks of ``group``.

    .. math::

        n = \sum_{\text{ranks}} \sum_{\text{micro-batches}} \#\{i : y_i \ne
        \text{ignore\_index}\}

    Pass it as ``normalize_by=`` to every micro-batch's loss so that the accumulated
    gradient, summed over the ranks, is the gradient of one big batch's ``mean``.

    Parameters
    ----------
    target : Tensor or sequence of Tensors
        Class indices, any shape (one tensor per micro-batch); or probability targets
        ``(..., C_r)``, each row counting as one token.
    ignore_index : int
        Label that is not counted (class indices only).
    group : ProcessGroup, optional
        The data-parallel group to sum over (default: the whole world).  Not the
        tensor-parallel group, whose ranks share their tokens.

    Returns
    -------
    Tensor
        A float64 scalar on the targets' device, the same on every rank: one
        ``all_reduce`` of one element.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch.distributed import global_token_count
    >>> micro = [torch.tensor([3, -100, 1]), torch.tensor([0, 2])]
    >>> global_token_count(micro, group=dp_group)  # doctest: +SKIP
    tensor(8., dtype=torch.float64)        # 4 tokens here, 4 on the other rank
    """
    targets = [target] if isinstance(target, torch.Tensor) else list(target)
    if not targets:
        raise ValueError("target must be a tensor or a non-empty sequence of tensors")
    ignore = Options(ignore_index=ignore_index).ignore_index
    device = targets[0].device
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i, t in enumerate(targets):
        _checks.tensor(t, f"target[{i}]")
        if t.dtype.is_floating_point:
            count = t.numel() // max(t.shape[-1], 1) if t.ndim else 1
            total = total + count
        else:
            total = total + (t != ignore).sum().to(total)
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


# --------------------------------------------------------------------------- the losses


def vocab_parallel_cross_entropy(
    logits_shard: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Any = None,
    vocab_sizes: Sequence[int] | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    normalize_by: torch.Tensor | float | None = None,
    validate: bool | None = None,
    agree: bool | None = None,
) -> torch.Tensor:
    r"""Cross-entropy of logits whose class dimension is split across a process group.

    Rank ``r`` of ``group`` holds ``logits_shard = z[..., start_r:stop_r]``, the slices
    contiguous and in group-rank order.  The result equals
    ``crossentropy.torch.cross_entropy(z, target, ...)`` on the whole ``z`` (up to float
    rounding) and is the same on every rank:

    .. math::

        \ell = -\sum_{c=1}^{C} w_c t'_c \log q_c
               + \lambda_z \, (\operatorname{logsumexp} z)^2 ,
        \qquad t' = (1 - \varepsilon) t + \varepsilon / C ,

    with ``C`` the **global** vocabulary and the ``logsumexp`` over all of it.  The
    gradient of ``logits_shard`` is computed in backward without any collective.

    Parameters
    ----------
    logits_shard : Tensor, shape (..., C_r)
        This rank's slice of the logits, class dimension last; may be empty (``C_r = 0``).
        float16/bfloat16 computed in float32, float64 kept.  A DTensor placed
        ``Shard(-1)`` on a 1-D mesh is accepted (see the module notes).
    target : Tensor, shape (...) integer or (..., C_r) floating
        Global class indices in ``[0, C)`` or ``ignore_index``, the same on every rank; or
        probabilities sharded like the logits.
    group : ProcessGroup, optional
        The vocabulary-parallel group (default: the whole world).
    vocab_sizes : sequence of int, optional
        ``C_r`` of every rank in group-rank order.  When given, no descriptor is exchanged
        unless ``agree`` or ``validate`` is True; otherwise the sizes are all-gathered and
        checked.
    weight : Tensor, shape (C_r,), optional
        This rank's slice of the class weights (no gradient flows to it).
    ignore_index, reduction, label_smoothing, z_loss, softcap
        As in :func:`crossentropy.torch.cross_entropy`; smoothing and z-loss are over the
        global vocabulary.
    normalize_by : Tensor or float, optional
        Divisor of ``reduction='mean'`` (of the loss and of the z-loss) instead of the
        local ``sum(omega)`` and number of counted tokens, e.g.
        :func:`global_token_count` for exact data-parallel gradient accumulation.  0 gives 0.
    temperature : float > 0
        As in :func:`crossentropy.torch.cross_entropy`: ``z = softcap(logits) / T``.
    validate : bool or None
        The data checks (see the module notes): ``None`` the local ones where they are
        free, ``True`` all of them, the cross-rank ones included, identically on every
        rank; ``False`` none.
    agree : bool or None
        Exchange the call descriptor so that every rank checks the same table (module
        notes).  Default: only when ``vocab_sizes`` is not given.  ``False`` needs
        ``vocab_sizes``.

    Returns
    -------
    Tensor
        Scalar, or shape (...) for ``reduction='none'``; float32 for half inputs.  The
        same on every rank.  An all-ignored batch gives 0 with zero gradients under
        ``mean``.

    Raises
    ------
    ValueError
        On every rank alike (when the ranks agree: see ``agree``), when
        any rank's arguments are wrong or the ranks disagree on the batch shape, dtype,
        options or slice sizes; the message names the rank.

    Examples
    --------
    Two ranks, the vocabulary ``[0, 5)`` split as 3 + 2::

        z = torch.randn(8, 5)                          # the same on both ranks
        shard = z[:, :3] if rank == 0 else z[:, 3:]
        loss = vocab_parallel_cross_entropy(shard.requires_grad_(), target,
                                            label_smoothing=0.1)
        # == crossentropy.torch.cross_entropy(z, target, label_smoothing=0.1)
    """
    arguments = dict(locals())
    name = "vocab_parallel_cross_entropy"
    logits_shard, g1 = _parallel.unwrap(logits_shard, "logits_shard", "shard", -1)
    target, g2 = _parallel.unwrap_target(target)
    weight, g3 = _parallel.unwrap(weight, "weight", "shard", 0)
    group = _parallel.group_of([g1, g2, g3], group)

    def local(opts: Options, reads: bool) -> _parallel.Local:
        _checks.floating(logits_shard, "logits_shard")
        if logits_shard.ndim < 1:
            raise ValueError("logits_shard must have a class dimension (the last)")
        size = int(logits_shard.shape[-1])
        soft = _checks.target(target, tuple(logits_shard.shape), False, opts.ignore_index)
        _check_class_weight(weight, "weight", size, reads)
        fields = {"weight": weight is not None}
        return _parallel.Local(
            size, tuple(logits_shard.shape[:-1]), logits_shard.dtype, soft, fields
        )

    call = _parallel.prepare(
        name, arguments, local=local, tensor=logits_shard, target=target, group=group
    )
    batch = tuple(logits_shard.shape[:-1])
    flat = logits_shard.reshape(math.prod(batch), logits_shard.shape[-1])
    labels = call.target
    assert labels is not None, "a loss has a target"
    loss, zl, omega = functions.dense(flat, labels, weight, call.opts)
    return _reduced(loss, zl, omega, labels, call.opts, batch)


def _reduced(
    loss: torch.Tensor,
    zl: torch.Tensor,
    omega: torch.Tensor,
    target: torch.Tensor,
    opts: Options,
    batch: tuple[int, ...],
) -> torch.Tensor:
    """The reduction of the per-token results, as every loss reduces (:mod:`._reduction`)."""
    _, counted = _reduction.omega_and_counted(target, None, opts, compute_dtype(loss.dtype))
    divs = _reduction.divisors(omega, counted, opts)
    out = _reduction.reduce(loss, zl if opts.z_loss else None, opts, divs)
    return out.reshape(batch) if opts.reduction == "none" else out


def _check_hidden_and_shard(hidden: Any, weight_shard: Any, bias: Any) -> int:
    """The fused losses' hidden states, weight rows and bias; the slice's width."""
    return _checks.output_layer(
        hidden, weight_shard, bias, weight_name="weight_shard", rows="C_r", allow_empty=True
    )[0]


def _check_class_weight(value: Any, name: str, local_size: int, validate: bool) -> None:
    """This rank's slice of the class weights: shape, (validate) values, and no gradient."""
    _checks.class_weight(
        value, local_size, validate, name, what="this rank's slice of the class weights"
    )
    if value is not None and value.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} (class weights) gets no gradient here; pass {name}.detach()")


def vocab_parallel_linear_cross_entropy(
    hidden: torch.Tensor,
    weight_shard: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Any = None,
    vocab_sizes: Sequence[int] | None = None,
    bias: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    normalize_by: torch.Tensor | float | None = None,
    reduce_hidden_grad: bool = True,
    validate: bool | None = None,
    agree: bool | None = None,
) -> torch.Tensor:
    r"""Fused ``hidden @ weight.T (+ bias)`` and cross-entropy with the weight split by rows.

    Rank ``r`` of ``group`` holds rows ``[start_r, stop_r)`` of the ``(C, D)`` output
    weight (uneven slices allowed, in group-rank order).  The result equals
    ``crossentropy.torch.linear_cross_entropy(hidden, weight, target, ...)`` on the whole
    weight and is the same on every rank; only one ``(chunk_size, C_r)`` block of logits
    exists at a time, in forward and in backward.

    Parameters
    ----------
    hidden : Tensor, shape (..., D)
        Hidden states, the same on every rank of the group.
    weight_shard : Tensor, shape (C_r, D)
        This rank's rows of the output weight, ``hidden``'s dtype.
    target : Tensor, shape (...) integer or (..., C_r) floating
        Global class indices in ``[0, C)`` or ``ignore_index``, the same on every rank; or
        probabilities sharded like the weight's rows (a constant: no gradient).
    group, vocab_sizes, normalize_by, temperature, validate, agree
        As in :func:`vocab_parallel_cross_entropy`.
    bias : Tensor, shape (C_r,), optional
        This rank's slice of the bias.
    class_weight : Tensor, shape (C_r,), optional
        This rank's slice of the class weights (no gradient flows to it).
    ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size
        As in :func:`crossentropy.torch.linear_cross_entropy`, ``chunk_size=None`` by the
        same rule with the slice's width ``C_r`` for ``V``.
    reduce_hidden_grad : bool
        All-reduce (sum) the hidden gradient over the group in backward, so every rank
        gets the full gradient.  Turn it off when the layer before already reduces it
        (e.g. Megatron's ``copy_to_tensor_model_parallel_region``); each rank then gets
        its slice's partial sum.

    Returns
    -------
    Tensor
        Scalar, or shape (...) for ``reduction='none'``; float32 for half inputs.

    Notes
    -----
    Forward: one descriptor ``all_gather`` (unless ``vocab_sizes``), one ``all_reduce``
    MAX and one ``all_reduce`` SUM of ``N`` and ``2N`` (``3N`` with smoothing) floats.
    Backward: one ``all_reduce`` SUM of the ``(N, D)`` hidden gradient in float32 (float64
    for float64).  Backward recomputes the logits chunk by chunk: ``8 N D C_r`` FLOPs per
    rank in all.

    Examples
    --------
    Two ranks, a ``(5, D)`` weight split as 3 + 2 rows::

        w_shard = w[:3] if rank == 0 else w[3:]
        loss = vocab_parallel_linear_cross_entropy(h, w_shard.requires_grad_(), y)
        loss.backward()     # h.grad summed over the group, w_shard.grad local
    """
    arguments = dict(locals())
    name = "vocab_parallel_linear_cross_entropy"
    (hidden, weight_shard, bias, target, class_weight), group = _parallel.unwrap_linear(
        group, hidden, weight_shard, bias, target, class_weight=class_weight
    )

    def local(opts: Options, reads: bool) -> _parallel.Local:
        size = _check_hidden_and_shard(hidden, weight_shard, bias)
        soft = _checks.target(target, (*hidden.shape[:-1], size), False, opts.ignore_index)
        if soft and target.requires_grad and torch.is_grad_enabled():
            raise ValueError("target (probabilities) gets no gradient here; pass target.detach()")
        _check_class_weight(class_weight, "class_weight", size, reads)
        fields = {
            "weight": class_weight is not None,
            "bias": bias is not None,
            "hidden_size": hidden.shape[-1],
        }
        return _parallel.Local(size, tuple(hidden.shape[:-1]), hidden.dtype, soft, fields)

    call = _parallel.prepare(
        name, arguments, local=local, tensor=hidden, target=target, group=group
    )
    batch = tuple(hidden.shape[:-1])
    flat = hidden.reshape(math.prod(batch), hidden.shape[-1]).contiguous()
    opts, labels = call.opts, call.target
    assert labels is not None, "a loss has a target"
    loss, zl, omega = functions.fused(flat, weight_shard, bias, labels, class_weight, opts)
    return _reduced(loss, zl, omega, labels, opts, batch)


def vocab_parallel_linear_token_stats(
    hidden: torch.Tensor,
    weight_shard: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    group: Any = None,
    vocab_sizes: Sequence[int] | None = None,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    top_k: int = 0,
    chunk_size: int | None = None,
    reduce_hidden_grad: bool = True,
    validate: bool | None = None,
    agree: bool | None = None,
) -> TokenStats:
    r""":func:`crossentropy.torch.linear_token_stats` with the weight split by rows.

    Rank ``r`` of ``group`` holds rows ``[start_r, stop_r)`` of the ``(V, D)`` output
    weight (uneven slices allowed, in group-rank order); ``hidden`` and ``target`` are
    the same on every rank.  Every field equals the single-process op's on the whole
    weight and is the same on every rank, and so are the gradients (``hidden``'s summed
    over the group in backward unless ``reduce_hidden_grad=False``; ``weight_shard`` and
    ``bias`` get their own slice's).

    Communication, forward: the descriptor ``all_gather`` when the ranks agree (see
    :func:`vocab_parallel_cross_entropy`), one ``all_reduce`` MAX of ``N`` floats and one
    ``all_reduce`` SUM of ``3 N`` (``4 N`` with a target) floats -- the engine's combine
    step --, one ``all_reduce`` MIN of ``N`` integers for the argmax, and with ``top_k``
    two ``all_gather`` of ``N k`` values and indices per rank.  Backward: one
    ``all_reduce`` SUM of the ``(N, D)`` hidden gradient.

    Parameters
    ----------
    hidden : Tensor, shape (..., D)
    weight_shard : Tensor, shape (V_r, D)
    target : Tensor, shape (...), integer, optional
        Global class indices, the same on every rank.
    group, vocab_sizes, validate, agree
        As in :func:`vocab_parallel_cross_entropy`.
    bias : Tensor, shape (V_r,), optional
        This rank's slice of the bias.
    temperature, softcap, ignore_index, top_k, chunk_size
        As in :func:`crossentropy.torch.linear_token_stats` (``top_k`` at most the global
        vocabulary).
    reduce_hidden_grad : bool
        As in :func:`vocab_parallel_linear_cross_entropy`.
    """
    arguments = dict(locals())
    name = "vocab_parallel_linear_token_stats"
    (hidden, weight_shard, bias, target), group = _parallel.unwrap_linear(
        group, hidden, weight_shard, bias, target
    )

    def local(opts: Options, reads: bool) -> _parallel.Local:
        size = _check_hidden_and_shard(hidden, weight_shard, bias)
        if target is not None:
            _checks.tensor(target, "target")
            if target.dtype.is_floating_point:
                raise TypeError(f"target must hold integer class indices, got {target.dtype}")
            _checks.target(target, (*hidden.shape[:-1], size), False, opts.ignore_index)
        fields: dict[str, Any] = {"target": target is not None, "bias": bias is not None}
        fields["hidden_size"] = hidden.shape[-1]
        return _parallel.Local(size, tuple(hidden.shape[:-1]), hidden.dtype, False, fields)

    call = _parallel.prepare(
        name, arguments, local=local, tensor=hidden, target=target, group=group
    )
    opts = call.opts
    assert opts.parallel is not None
    if opts.top_k > opts.parallel.vocab:
        raise ValueError(
            f"{name}: top_k must be at most the vocabulary size {opts.parallel.vocab}, "
            f"got {opts.top_k}"
        )
    batch = tuple(hidden.shape[:-1])
    flat = hidden.reshape(math.prod(batch), hidden.shape[-1]).contiguous()
    out = _stats.apply(flat, weight_shard, bias, call.target, opts)
    return stats_result(out, batch, opts, target)


def vocab_parallel_linear_distillation_loss(
    hidden: torch.Tensor,
    weight_shard: torch.Tensor,
    teacher: torch.Tensor | Teacher,
    *,
    group: Any = None,
    vocab_sizes: Sequence[int] | None = None,
    bias: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    target: torch.Tensor | None = None,
    hard_weight: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalize_by: torch.Tensor | float | None = None,
    softcap: float | None = None,
    chunk_size: int | None = None,
    reduce_hidden_grad: bool = True,
    validate: bool | None = None,
    agree: bool | None = None,
) -> torch.Tensor:
    r""":func:`crossentropy.torch.linear_distillation_loss` with the vocabulary split
    across ``group``: the student's weight rows, and the teacher's (a
    :class:`~crossentropy.torch.Teacher` whose ``weight`` holds the same rows of the
    teacher's output layer, or the teacher's logits sharded like the student's).

    The result equals the single-process loss on the whole vocabulary and is the same on
    every rank.  Forward communication is ``O(tokens)``: the descriptor gather when the
    ranks agree, one ``all_reduce`` MAX and one SUM of the packed normalisers (student and
    teacher at ``T``, and the student at temperature 1 with ``hard_weight``), and one SUM
    of the divergence's per-token sums; backward one ``all_reduce`` of the ``(N, D)``
    hidden gradient.  A :class:`~crossentropy.torch.TopK` teacher is not sharded by
    vocabulary: use the single-process loss for it.

    Parameters
    ----------
    hidden, weight_shard, bias, group, vocab_sizes, chunk_size, reduce_hidden_grad,
    validate, agree
        As in :func:`vocab_parallel_linear_cross_entropy`.
    teacher : Tensor (..., V_r) or Teacher
        This rank's slice of the teacher (no gradient).
    divergence, beta, temperature, target, hard_weight, ignore_index, reduction,
    normalize_by, softcap
        As in :func:`crossentropy.torch.distillation_loss` (``target`` the same on every
        rank).
    """
    arguments = dict(locals())
    name = "vocab_parallel_linear_distillation_loss"
    (hidden, weight_shard, bias, target), group = _parallel.unwrap_linear(
        group, hidden, weight_shard, bias, target
    )
    flat_teacher: list[Any] = []

    def local(opts: Options, reads: bool) -> _parallel.Local:
        size = _check_hidden_and_shard(hidden, weight_shard, bias)
        if isinstance(teacher, TopK):
            raise ValueError(
                "teacher: a TopK teacher is not sharded by vocabulary; use "
                "crossentropy.torch.linear_distillation_loss for it"
            )
        batch = tuple(hidden.shape[:-1])
        flat_teacher.append(_functional.teacher_of(teacher, batch, size, False, opts))
        _functional.distill_target(target, batch, 1 << 62, False, opts)
        fields: dict[str, Any] = {"target": target is not None, "bias": bias is not None}
        fields["teacher"] = type(teacher).__name__
        fields["hidden_size"] = hidden.shape[-1]
        return _parallel.Local(size, batch, hidden.dtype, False, fields)

    call = _parallel.prepare(
        name, arguments, local=local, tensor=hidden, target=target, group=group
    )
    opts = call.opts
    batch = tuple(hidden.shape[:-1])
    flat = hidden.reshape(math.prod(batch), hidden.shape[-1]).contiguous()
    loss = _distill.parallel(flat, weight_shard, bias, flat_teacher[0], call.target, opts)
    counted = _distill._counted(call.target, flat.shape[0], opts, loss.dtype, loss.device)
    out = _reduction.reduce(loss, None, opts, _reduction.divisors(counted, counted, opts))
    return out.reshape(batch) if opts.reduction == "none" else out
