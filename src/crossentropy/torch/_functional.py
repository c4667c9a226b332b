"""The functional losses: check the data, build the one :class:`Options`, run a path.

Each public function takes flat, PyTorch-style keywords and builds one frozen
:class:`~._options.Options` (which checks every option); the data checks follow; then
the options go down unchanged to the plain-PyTorch reference, the fused chunked loss or
the Triton kernels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from . import _checks, _chunked, _distill, _reference, _stats
from ._distill import Teacher, TopK
from ._options import Options, compute_dtype
from ._stats import TokenStats

__all__ = [
    "cross_entropy",
    "distillation_loss",
    "entropy_loss",
    "kl_loss",
    "linear_cross_entropy",
    "linear_distillation_loss",
    "linear_token_stats",
    "token_stats",
]


def _use_triton(opts: Options, tensor: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether to run the Triton kernels: ``impl='triton'`` (or it fails), or ``'auto'`` on
    CUDA tensors with Triton installed.  ``'torch'`` is the plain-PyTorch path."""
    if opts.impl == "torch":
        return False
    from . import _triton  # looks only: no Triton import until a kernel runs

    if opts.impl == "triton":
        if not _triton.available(tensor):
            raise ValueError(
                "impl='triton' needs a CUDA tensor and Triton installed "
                "(or TRITON_INTERPRET=1 for CPU tensors)"
            )
        return True
    # Gradients for class weights or soft targets stay on the reference path.
    return (
        tensor.is_cuda
        and _triton.available(tensor)
        and not any(t is not None and t.requires_grad for t in others)
    )


def _resolved(opts: Options, triton: bool) -> Options:
    """``opts`` with ``impl`` resolved to the path that runs."""
    impl = "triton" if triton else "torch"
    return opts if opts.impl == impl else dataclasses.replace(opts, impl=impl)


def dense_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: Options,
    validate: bool | None,
    divergence: bool,
) -> torch.Tensor:
    """:func:`cross_entropy` (or with ``divergence`` :func:`kl_loss`) under ``opts``."""
    _checks.logits(logits)
    target = _checks.as_labels(target)
    _checks.same_device(logits=logits, target=target, weight=weight)
    reads = _checks.reads_data(validate, logits)
    _checks.target(target, tuple(logits.shape), reads, opts.ignore_index)
    _checks.class_weight(weight, logits.shape[-1], reads)
    if _use_triton(opts, logits, target, weight):
        from ._triton import triton_dense_loss

        return triton_dense_loss(logits, target, weight, _resolved(opts, True), divergence)
    return _reference.loss(logits, target, weight, opts, divergence)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    normalize_by: float | torch.Tensor | None = None,
    validate: bool | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Cross-entropy loss of logits against class indices or probabilities.

    With :math:`z = \operatorname{softcap}(\text{logits}) / T` (``softcap`` and
    ``temperature`` optional), :math:`q = \operatorname{softmax}(z)`,
    the smoothed target :math:`t' = (1 - \varepsilon) t + \varepsilon / C` and class
    weights :math:`w`, each token's loss is

    .. math::

        \ell = \underbrace{-\sum_c w_c t'_c \log q_c}_{\ell_H}
               + \lambda_z \, (\operatorname{logsumexp} z)^2

    for a counted token (0 log 0 = 0: a zero target at a ``-inf`` logit adds nothing).
    The z-loss is **not** weighted by the class weights: every counted token carries
    :math:`\lambda_z \operatorname{lse}^2` alike, as in PaLM and Liger-Kernel.  With
    :math:`\omega = w_y` for a class index :math:`y` (0 if ignored) and 1 for a
    probability target, ``mean`` is
    :math:`\sum \ell_H / \sum \omega + \lambda_z \sum \operatorname{lse}^2 / n`,
    :math:`n` the number of counted tokens: the cross-entropy part follows
    :func:`torch.nn.functional.cross_entropy`, which this matches wherever their options
    overlap, and the z-loss is a plain mean over the counted tokens.

    Parameters
    ----------
    logits : Tensor, shape (..., C)
        Unnormalised scores, class dimension **last** (for ``F.cross_entropy``'s
        ``(N, C, d1, ...)`` layout pass ``logits.movedim(1, -1)``).  float16 and bfloat16
        are computed in float32; float64 stays float64.
    target : Tensor, shape (...) integer or (..., C) floating
        Class indices in ``[0, C)`` or equal to ``ignore_index``, or probabilities (soft
        labels, e.g. a teacher's distribution).
    weight : Tensor, shape (C,), optional
        Per-class weights.
    ignore_index : int
        Class index whose tokens count for nothing (labels only).
    reduction : {'mean', 'sum', 'none'}
        ``none`` returns shape (...).
    label_smoothing : float in [0, 1]
        Mass spread uniformly over all C classes.
    z_loss : float >= 0
        Coefficient of the z-loss :math:`\lambda_z (\operatorname{logsumexp} z)^2`, the
        same for every counted token whatever its class weight.
    softcap : float > 0, optional
        Applied first: :math:`z = s \tanh(\text{logits} / s)`.
    temperature : float > 0
        Divides the (soft-capped) logits before everything else,
        :math:`z = \operatorname{softcap}(\text{logits}) / T`: label smoothing, the
        z-loss (on :math:`\operatorname{logsumexp} z`), the loss and its gradient with
        respect to the logits all see this :math:`z`.  Default 1.
    normalize_by : number or 0-d Tensor, optional
        With ``reduction='mean'`` only: the ``sum`` of the loss (cross-entropy and
        z-loss parts) divided by this count instead of the mean's own divisors -- e.g.
        the counted tokens of every micro-batch and data-parallel rank (Hugging Face's
        ``num_items_in_batch``), so that accumulated micro-batches give exactly the
        gradient of one big batch.  A tensor stays on its device (no host
        synchronisation); 0 gives 0.
    validate : bool, optional
        Check the data too (labels in range, probabilities non-negative and summing to 1).
        That synchronises with the host, so by default (``None``) it runs only where it
        costs nothing: CPU tensors outside ``torch.compile``.  ``True`` forces it (a host
        sync on CUDA); ``False`` skips it, and an out-of-range label then gives a NaN loss.
    impl : {'auto', 'torch', 'triton'}
        ``auto`` runs the Triton kernels on CUDA tensors when Triton is installed (and no
        class weight or soft target needs a gradient), else this plain-PyTorch path;
        ``torch`` and ``triton`` force one.

    Returns
    -------
    Tensor
        float32 for half inputs, else the logits' dtype; scalar unless ``reduction='none'``.
        If every token is ignored, ``mean`` gives 0 with zero gradients (not NaN as
        ``F.cross_entropy`` does).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import cross_entropy
    >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    >>> cross_entropy(logits, torch.tensor([0, -100]))  # log(e^2 + 2) - 2
    tensor(0.2395)
    """
    opts = Options.of(locals())
    return dense_loss(logits, target, weight, opts, validate, divergence=False)


def kl_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    normalize_by: float | torch.Tensor | None = None,
    validate: bool | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    r"""KL divergence :math:`D(t' \,\|\, \operatorname{softmax}(z))` from target to model.

    Each token's loss is the cross-entropy of :func:`cross_entropy` less the target's
    (weighted) entropy,

    .. math::

        \ell = \sum_c w_c t'_c \log \frac{t'_c}{q_c}
               + \lambda_z \, (\operatorname{logsumexp} z)^2
             = \ell - S_w(t') \text{ (with } \ell \text{ that of cross\_entropy)},

    so ``cross_entropy(z, t) - kl_loss(z, t)`` is the target's entropy and the two have
    the same gradient with respect to ``z``, to the bit: minimising one minimises the
    other.  For class indices without smoothing the target's entropy is 0 and the two are
    equal.  Arguments, reductions and edge cases are those of :func:`cross_entropy`
    (``mean`` over tokens is ``F.kl_div``'s ``batchmean`` for 2-D logits).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import kl_loss
    >>> kl_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))  # log 2
    tensor(0.6931)
    """
    opts = Options.of(locals())
    return dense_loss(logits, target, weight, opts, validate, divergence=True)


def entropy_loss(
    logits: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    softcap: float | None = None,
    temperature: float = 1.0,
    normalize_by: float | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The model's own entropy, for entropy regularisation.

    .. math::

        S(q) = -\sum_c q_c \log q_c, \qquad q = \operatorname{softmax}(z),
        \quad z = \operatorname{softcap}(\text{logits}) / T .

    Parameters
    ----------
    logits : Tensor, shape (..., C)
        Class dimension last; half dtypes computed in float32.  ``-inf`` logits are
        classes of probability 0 (``0 log 0 = 0``).
    mask : bool Tensor, shape (...), optional
        Tokens that count; ``mean`` divides by their number (0 if there are none).
    reduction : {'mean', 'sum', 'none'}
    softcap, temperature, normalize_by
        As in :func:`cross_entropy`.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import entropy_loss
    >>> entropy_loss(torch.zeros(2, 4))  # log 4, the uniform distribution's
    tensor(1.3863)
    """
    opts = Options.of(locals())
    _checks.logits(logits)
    _checks.mask(mask, tuple(logits.shape[:-1]))
    _checks.same_device(logits=logits, mask=mask)
    return _reference.entropy_loss(logits, mask, opts)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    temperature: float = 1.0,
    normalize_by: float | torch.Tensor | None = None,
    chunk_size: int | None = None,
    validate: bool | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Cross-entropy of the logits ``hidden @ weight.T + bias``, never materialised.

    Equal, up to float rounding, to ``cross_entropy(hidden @ weight.T + bias, target,
    ...)`` with the same options (see :func:`cross_entropy` for the definition), but the
    tokens are processed ``chunk_size`` at a time and the gradient is computed during the
    forward pass, so only one ``(chunk_size, V)`` block of logits ever exists and the
    work is the minimal :math:`6 N D V` FLOPs.

    Parameters
    ----------
    hidden : Tensor, shape (..., D)
        Hidden states of ``N = prod(...)`` tokens.  ``D = 0`` is allowed: the logits are
        then the bias (0 without one).  All tensors on one device (else ValueError).
    weight : Tensor, shape (V, D)
        The output projection (e.g. the language-model head), same dtype as ``hidden``.
    target : Tensor, shape (...) integer or (..., V) floating
        Class indices in ``[0, V)`` or equal to ``ignore_index``, or probabilities (soft
        labels, e.g. a teacher's): then each chunk reads its rows of the target, and
        only the target itself is ``(N, V)``.  A constant: a target that requires grad is
        refused.
    bias : Tensor, shape (V,), optional
    class_weight : Tensor, shape (V,), optional
        Per-class weights: :func:`cross_entropy`'s ``weight`` (``F.linear_cross_entropy``'s
        ``weight``; here ``weight`` is the projection), with the same ``mean`` rule
        (the cross-entropy divided by the summed weights of the counted tokens, the
        z-loss, which the class weights do not scale, by their number).  A constant: it gets no
        gradient, and one that requires grad is refused.
    ignore_index, reduction, label_smoothing, z_loss, softcap, temperature, normalize_by
        As in :func:`cross_entropy`; ``reduction='none'`` returns shape (...).
    validate, impl
        As in :func:`cross_entropy`.
    chunk_size : int, optional
        Tokens per chunk.  ``None`` takes the larger of (a) the tokens whose working set --
        the chunk's float32 logits (twice with ``softcap``, once more for probability
        targets; plus the half-precision logits for half inputs; for the Triton kernel,
        which works in place, the one block in the input dtype) -- fits 64 MiB and
        (b) ``D / 2`` tokens, capped at 512 MiB of working set.  The float32 weight
        gradient is read and written once per chunk, so (b) keeps that memory traffic
        small next to the chunk's matrix products; it makes the working set at most half
        the size of the weight gradient.  In float32: 512
        tokens at ``(D, V) = (512, 32768)`` (64 MiB), 512 at ``(1024, 128256)``
        (250 MiB), 1024 at ``(2048, 32768)`` (128 MiB).  The result does not depend on
        the chunk size beyond float rounding, and is deterministic.  The same rule, with
        the slice's width for ``V``, serves the vocabulary-parallel fused loss.

    Returns
    -------
    Tensor
        float32 for half inputs, else the input dtype.  Gradients for ``hidden``,
        ``weight`` and ``bias`` come back in their own dtypes; the weight gradient is
        accumulated in float32.

    Notes
    -----
    * With ``mean`` or ``sum``, the gradients are computed in the forward pass (only when
      grad mode is on and an input requires grad; otherwise only the loss is computed),
      and ``backward`` only scales them, in place, by the incoming gradient.  The float32
      weight gradient is handed to autograd, not copied.
    * With ``none``, the per-token upstream gradient is unknown in the forward pass, so
      ``backward`` recomputes the logits chunk by chunk (:math:`8 N D V` FLOPs in all); it
      is exact for any upstream gradient.
    * A second backward through the same graph (``retain_graph=True``) recomputes and is
      right.  Double backward (``create_graph=True``) is not supported and raises.
    * Under ``torch.compile`` the function runs eagerly (a graph break), like
      PyTorch's own chunked path.
    * ``impl='auto'`` keeps class weights and probability targets on this plain-PyTorch
      path (the Triton fused kernel has neither); ``impl='triton'`` with them raises.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import linear_cross_entropy
    >>> hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> weight = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    >>> linear_cross_entropy(hidden, weight, torch.tensor([0, -100]))  # log(e^2 + 2) - 2
    tensor(0.2395)
    """
    opts = Options.of(locals())
    return fused_loss(hidden, weight, target, bias, class_weight, opts, validate)


def fused_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None,
    class_weight: torch.Tensor | None,
    opts: Options,
    validate: bool | None,
) -> torch.Tensor:
    """:func:`linear_cross_entropy` under ``opts``."""
    target = _checks.as_labels(target)
    vocab, dim = _checks.output_layer(
        hidden, weight, bias, target=target, class_weight=class_weight
    )
    reads_data = _checks.reads_data(validate, hidden)
    soft = _checks.target(target, (*hidden.shape[:-1], vocab), reads_data, opts.ignore_index)
    if soft and target.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "target (probabilities) must not require grad: the fused loss treats "
            "it as a constant (use cross_entropy on the logits for its gradient)"
        )
    _checks.class_weight(class_weight, vocab, reads_data, "class_weight")
    if class_weight is not None and class_weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "class_weight must not require grad: the fused loss treats it as a "
            "constant (use cross_entropy on the logits for its gradient)"
        )
    if class_weight is not None and opts.impl == "triton":
        raise ValueError(
            "impl='triton' has no class weights in the fused kernel; use "
            "impl='torch' (or 'auto') with class_weight"
        )
    if soft and opts.impl == "triton":
        raise ValueError(
            "impl='triton' has no probability targets in the fused kernel; use "
            "impl='torch' (or 'auto')"
        )
    triton = _use_triton(opts, hidden) and class_weight is None and not soft
    # Not reshape(-1, dim): with D = 0 the token count would be ambiguous.
    flat = hidden.reshape(math.prod(hidden.shape[:-1]), dim).contiguous()
    labels = target.reshape(-1, vocab) if soft else target.reshape(-1).long()
    if class_weight is not None:
        class_weight = class_weight.to(compute_dtype(hidden.dtype))
    loss = _chunked.apply(flat, weight, bias, labels, class_weight, _resolved(opts, triton))
    if opts.reduction == "none":
        loss = loss.reshape(hidden.shape[:-1])
    return loss


def _stats_target(target: Any, batch: tuple[int, ...], vocab: int, reads: bool, opts: Options):
    """Check the optional class-index target of the per-token statistics; flat int64."""
    if target is None:
        return None
    target = _checks.as_labels(target)
    _checks.tensor(target, "target")
    if target.dtype.is_floating_point:
        raise TypeError(
            f"target must hold integer class indices (the sampled tokens), got {target.dtype}"
        )
    _checks.target(target, (*batch, vocab), reads, opts.ignore_index)
    return target.reshape(-1).long()


def _check_top_k(opts: Options, vocab: int) -> None:
    if opts.top_k > vocab:
        raise ValueError(f"top_k must be at most the vocabulary size {vocab}, got {opts.top_k}")


def stats_result(out: tuple[torch.Tensor, ...], batch: tuple[int, ...], opts: Options, target):
    log_prob, entropy, lse, collision, argmax, correct, top_i, top_lp = (
        t.reshape(batch + tuple(t.shape[1:])) for t in out
    )
    has_k = opts.top_k > 0
    return TokenStats(
        log_prob if target is not None else None,
        entropy,
        lse,
        collision,
        argmax,
        correct if target is not None else None,
        top_i if has_k else None,
        top_lp if has_k else None,
    )


def token_stats(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    top_k: int = 0,
    validate: bool | None = None,
    impl: str = "auto",
) -> TokenStats:
    r"""Per-token statistics of logits: log-probability, entropy and more, in one pass.

    With :math:`z = \operatorname{softcap}(\text{logits}) / T` and
    :math:`q = \operatorname{softmax}(z)`, each of shape ``logits.shape[:-1]``:

    ==================  ==========================================================  ====
    field               value                                                        grad
    ==================  ==========================================================  ====
    ``log_prob``        :math:`\log q_y`; 0 where ``target == ignore_index``;         yes
                        None without ``target``
    ``entropy``         :math:`-\sum_c q_c \log q_c` (nats; ``0 log 0 = 0``)          yes
    ``logsumexp``       :math:`\log \sum_c e^{z_c}`                                   yes
    ``collision``       :math:`\sum_c q_c^2` (Renyi-2 entropy is its ``-log``)        yes
    ``argmax``          index of the largest :math:`z`, ties to the lowest index      no
    ``correct``         ``argmax == target``, False where ignored; None without it    no
    ``top_k_indices``,  shape ``(..., k)``: the ``top_k`` largest :math:`\log q`,     no
    ``top_k_log_probs`` descending, and their classes; None when ``top_k == 0``
    ==================  ==========================================================  ====

    The statistics are float32 for half inputs (float64 kept), the integer fields int64.
    Any combination of the differentiable fields may feed a loss; the gradient is exact
    for every upstream gradient.  For the output layer without its logits see
    :func:`linear_token_stats`.

    Parameters
    ----------
    logits : Tensor, shape (..., V)
    target : Tensor, shape (...), integer, optional
        Class indices (e.g. the sampled tokens) in ``[0, V)`` or ``ignore_index``.
    temperature, softcap, ignore_index, validate
        As in :func:`cross_entropy`.
    top_k : int, 0 <= top_k <= V
        How many of the largest log-probabilities to return.
    impl : {'auto', 'torch'}
        Accepted for symmetry with the losses; this op runs on the plain-PyTorch path.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import token_stats
    >>> s = token_stats(torch.zeros(1, 4), torch.tensor([2]))
    >>> round(s.log_prob.item(), 4), round(s.entropy.item(), 4), s.collision.item()
    (-1.3863, 1.3863, 0.25)
    """
    opts = Options.of(locals())
    _checks.logits(logits)
    vocab = logits.shape[-1]
    _check_top_k(opts, vocab)
    batch = tuple(logits.shape[:-1])
    reads = _checks.reads_data(validate, logits)
    _checks.same_device(logits=logits, target=target)
    flat_target = _stats_target(target, batch, vocab, reads, opts)
    flat = logits.reshape(-1, vocab)
    return stats_result(_reference.token_stats(flat, flat_target, opts), batch, opts, target)


def linear_token_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
    ignore_index: int = -100,
    top_k: int = 0,
    chunk_size: int | None = None,
    validate: bool | None = None,
    impl: str = "auto",
) -> TokenStats:
    r"""The per-token statistics of :func:`token_stats` for the logits
    ``hidden @ weight.T + bias``, which are never materialised.

    The tokens go through the fused-chunk driver ``chunk_size`` at a time (the rule of
    :func:`linear_cross_entropy`, with one more block for the statistics' scratch): the
    forward pass is one product per chunk, ``2 N D V`` FLOPs; the backward, for any
    combination of upstream gradients on ``log_prob``, ``entropy``, ``logsumexp`` and
    ``collision``, recomputes each chunk's logits once and applies them all at once
    (``6 N D V`` more).  Deterministic and chunk-size independent; no ``(N, V)`` tensor
    and no host synchronisation (beyond ``validate``'s rule); under ``torch.compile`` it
    runs eagerly (a graph break).

    Parameters
    ----------
    hidden : Tensor, shape (..., D)
    weight : Tensor, shape (V, D)
    target : Tensor, shape (...), integer, optional
    bias : Tensor, shape (V,), optional
    temperature, softcap, ignore_index, top_k, validate
        As in :func:`token_stats`.
    chunk_size, impl
        As in :func:`linear_cross_entropy`: ``impl='auto'`` runs the Triton row kernel's
        statistics mode on CUDA tensors where Triton is installed.

    Examples
    --------
    A GRPO-style objective with an entropy bonus, composed outside the kernel::

        s = linear_token_stats(h, lm_head.weight, tokens, temperature=0.7)
        ratio = (s.log_prob - old_log_prob).exp()
        surrogate = torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
        loss = -(surrogate * mask).sum() / mask.sum() - 0.01 * s.entropy.mean()
    """
    opts = Options.of(locals())
    vocab, dim = _checks.output_layer(hidden, weight, bias, target=target)
    _check_top_k(opts, vocab)
    batch = tuple(hidden.shape[:-1])
    reads = _checks.reads_data(validate, hidden)
    flat_target = _stats_target(target, batch, vocab, reads, opts)
    flat = hidden.reshape(math.prod(batch), dim).contiguous()
    triton = _use_triton(opts, hidden)
    out = _stats.apply(flat, weight, bias, flat_target, _resolved(opts, triton))
    return stats_result(out, batch, opts, target)


def teacher_of(teacher: Any, batch: tuple[int, ...], vocab: int, reads: bool, opts: Options):
    """Check a distillation teacher against the student's batch and vocabulary; flat."""
    tokens = math.prod(batch)
    if isinstance(teacher, TopK):
        indices, log_probs = teacher
        _checks.tensor(indices, "teacher.indices")
        _checks.floating(log_probs, "teacher.log_probs")
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"teacher.indices must be integer classes, got {indices.dtype}")
        k = indices.shape[-1] if indices.ndim else 0
        if tuple(indices.shape) != (*batch, k) or tuple(log_probs.shape) != (*batch, k) or k < 1:
            raise ValueError(
                f"teacher (TopK) indices and log_probs must both have shape {(*batch, 'k')} "
                f"with k >= 1, got {tuple(indices.shape)} and {tuple(log_probs.shape)}"
            )
        if k > vocab:
            raise ValueError(f"teacher (TopK) k = {k} exceeds the vocabulary size {vocab}")
        if opts.divergence != "forward_kl":
            raise ValueError(
                "a TopK teacher supports divergence='forward_kl' only (the KL over its k "
                f"classes and one tail bucket), got divergence={opts.divergence!r}"
            )
        flat_i = _checks.as_labels(indices).reshape(tokens, k).long()
        flat_lp = log_probs.reshape(tokens, k)
        if reads:
            _check_top_k_data(flat_i, flat_lp, vocab)
        return TopK(flat_i, flat_lp)
    if isinstance(teacher, Teacher):
        hidden, weight, bias, softcap = teacher
        _checks.floating(hidden, "teacher.hidden")
        _checks.floating(weight, "teacher.weight")
        if weight.ndim != 2 or weight.shape[0] != vocab:
            raise ValueError(
                f"teacher.weight must have shape ({vocab}, D_t): its vocabulary must equal "
                f"the student's ({vocab}), got {tuple(weight.shape)}"
            )
        if tuple(hidden.shape) != (*batch, weight.shape[1]):
            raise ValueError(
                f"teacher.hidden must have shape {(*batch, weight.shape[1])} (the student's "
                f"tokens, the teacher's hidden size), got {tuple(hidden.shape)}"
            )
        _checks.same_dtype(hidden, "teacher.hidden", **{"teacher.weight": weight})
        if bias is not None and tuple(bias.shape) != (vocab,):
            raise ValueError(f"teacher.bias must have shape ({vocab},), got {tuple(bias.shape)}")
        Options(softcap=softcap)  # the teacher's softcap, checked as every softcap
        flat = hidden.reshape(tokens, weight.shape[1]).contiguous()
        return Teacher(
            flat.detach(), weight.detach(), None if bias is None else bias.detach(), softcap
        )
    _checks.floating(teacher, "teacher")
    if tuple(teacher.shape) != (*batch, vocab):
        raise ValueError(
            f"teacher (logits) must have the student's logits shape {(*batch, vocab)}, got "
            f"{tuple(teacher.shape)}"
        )
    return teacher.detach().reshape(tokens, vocab)


def _check_top_k_data(indices: torch.Tensor, log_probs: torch.Tensor, vocab: int) -> None:
    if bool(((indices < 0) | (indices >= vocab)).any()):
        raise ValueError(f"teacher (TopK) indices must lie in [0, {vocab})")
    ordered = indices.sort(-1).values
    if bool((ordered[:, 1:] == ordered[:, :-1]).any()):
        raise ValueError("teacher (TopK) indices must be distinct within each token")
    tol = 1e-6 if log_probs.dtype == torch.float64 else 1e-3
    if bool((log_probs > tol).any()) or bool(torch.isnan(log_probs).any()):
        raise ValueError("teacher (TopK) log_probs must be log-probabilities (<= 0)")


def distill_target(target: Any, batch: tuple[int, ...], vocab: int, reads: bool, opts: Options):
    if target is None:
        if opts.hard_weight:
            raise ValueError("hard_weight > 0 needs target (class indices for the hard part)")
        return None
    return _stats_target(target, batch, vocab, reads, opts)


def distillation_loss(
    logits: torch.Tensor,
    teacher: torch.Tensor | TopK,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    target: torch.Tensor | None = None,
    hard_weight: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalize_by: float | torch.Tensor | None = None,
    softcap: float | None = None,
    validate: bool | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    r"""Distillation loss of the student's logits from a teacher.

    With :math:`p` the teacher's and :math:`q` the student's distribution, both at
    temperature :math:`T` (:math:`q = \operatorname{softmax}(\operatorname{softcap}(z)/T)`,
    :math:`p = \operatorname{softmax}(t / T)`), each token's divergence is one of

    ===================  ==========================================================
    ``forward_kl``       :math:`D(p \| q)` (covers the teacher's modes)
    ``reverse_kl``       :math:`D(q \| p)` (seeks one mode)
    ``jsd``              :math:`\beta D(p \| m) + (1-\beta) D(q \| m)`,
                         :math:`m = \beta p + (1 - \beta) q` (GKD's generalized JSD;
                         ``beta=0`` is exactly ``forward_kl``, ``beta=1`` exactly
                         ``reverse_kl``, as TRL's ``GKDTrainer.generalized_jsd_loss``)
    ``skew_kl``          :math:`D(p \| \beta p + (1-\beta) q)` (DistiLLM)
    ``skew_reverse_kl``  :math:`D(q \| \beta q + (1-\beta) p)`
    ``tvd``              :math:`\tfrac12 \sum_c |p_c - q_c|`
    ===================  ==========================================================

    With ``hard_weight`` :math:`\lambda` the token's loss is
    :math:`(1 - \lambda) D + \lambda H(y, q_1)`, the cross-entropy of the student at
    temperature 1 against ``target`` (default 0: nothing changes silently).
    ``0 log 0 = 0`` throughout.  This is the essay's setting made literal: the teacher's
    entropy :math:`S(p)` is not 0, and ``forward_kl`` is the cross-entropy to the
    teacher less that constant.

    Parameters
    ----------
    logits : Tensor, shape (..., V)
    teacher : Tensor (..., V) of teacher logits, or TopK(indices, log_probs)
        A :class:`TopK` teacher gives its log-probabilities at its ``k`` most likely
        classes (stored offline or sent by a served teacher), used as given (the
        temperature applies to the student only); it supports ``forward_kl``: the KL of
        the distributions coarsened to those ``k`` classes plus one tail bucket,
        :math:`p_{tail} = 1 - \sum_k p`, :math:`q_{tail} = 1 - \sum_k q`, which is
        :math:`\ge 0` and 0 exactly when the student matches the teacher on the ``k``
        classes and in total on the rest.  The teacher gets no gradient.
    divergence : str
    beta : float in [0, 1] (in (0, 1) for ``skew_*``)
    temperature, softcap, normalize_by, validate
        As in :func:`cross_entropy` (``softcap`` is the student's).
    target : Tensor, shape (...), integer, optional
        Class indices with ``ignore_index``: ignored tokens count for nothing; needed
        when ``hard_weight > 0``.
    hard_weight : float in [0, 1]
    reduction : {'mean', 'sum', 'none'}
        ``mean`` over the counted tokens (all tokens without ``target``); an all-ignored
        batch gives 0 with zero gradients.
    impl : {'auto', 'torch'}
        Accepted for symmetry; this loss runs on the plain-PyTorch chunk maths.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import distillation_loss
    >>> student, teacher = torch.zeros(1, 2), torch.tensor([[0.0, -1e9]])
    >>> distillation_loss(student, teacher)  # D(one-hot || uniform) = log 2
    tensor(0.6931)
    """
    opts = Options.of(locals())
    _checks.logits(logits)
    vocab = logits.shape[-1]
    batch = tuple(logits.shape[:-1])
    reads = _checks.reads_data(validate, logits)
    flat_teacher = teacher_of(teacher, batch, vocab, reads, opts)
    flat_target = distill_target(target, batch, vocab, reads, opts)
    out = _distill.dense(logits.reshape(-1, vocab), flat_teacher, flat_target, opts)
    return out.reshape(batch) if opts.reduction == "none" else out


def linear_distillation_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    teacher: torch.Tensor | TopK | Teacher,
    *,
    bias: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    target: torch.Tensor | None = None,
    hard_weight: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
    normalize_by: float | torch.Tensor | None = None,
    softcap: float | None = None,
    chunk_size: int | None = None,
    validate: bool | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    r""":func:`distillation_loss` of the student's logits ``hidden @ weight.T + bias``,
    never materialised.

    ``teacher`` is a tensor of teacher logits (read a chunk at a time), a :class:`TopK`,
    or a :class:`Teacher` ``(hidden, weight, bias=None, softcap=None)`` whose logits are
    computed chunk by chunk without gradient (its hidden size may differ from the
    student's; its vocabulary must equal it).  The tokens go through the fused-chunk
    driver: for ``mean`` and ``sum`` the gradients of the student's hidden, weight and
    bias are computed in the forward pass (``6 N D V`` FLOPs, plus ``2 N D_t V`` for a
    :class:`Teacher`), for ``none`` recomputed in backward with any upstream gradient.
    The weight gradient is accumulated in float32 for half inputs.

    Parameters
    ----------
    hidden : Tensor, shape (..., D)
    weight : Tensor, shape (V, D)
    teacher : Tensor (..., V), TopK or Teacher
    bias : Tensor, shape (V,), optional
    divergence, beta, temperature, target, hard_weight, ignore_index, reduction,
    normalize_by, softcap, validate
        As in :func:`distillation_loss`.
    chunk_size, impl : optional
        As in :func:`linear_cross_entropy`: ``impl='auto'`` runs the Triton row kernel's
        divergence mode on CUDA tensors where Triton is installed (not for a
        :class:`TopK` teacher, which stays on the plain-PyTorch step).
    """
    opts = Options.of(locals())
    vocab, dim = _checks.output_layer(hidden, weight, bias, target=target)
    batch = tuple(hidden.shape[:-1])
    reads = _checks.reads_data(validate, hidden)
    flat_teacher = teacher_of(teacher, batch, vocab, reads, opts)
    flat_target = distill_target(target, batch, vocab, reads, opts)
    flat = hidden.reshape(math.prod(batch), dim).contiguous()
    top_k = isinstance(flat_teacher, TopK)
    if top_k and opts.impl == "triton":
        raise ValueError(
            "impl='triton' has no TopK teacher in the divergence kernel; use impl='torch' "
            "(or 'auto')"
        )
    triton = _use_triton(opts, hidden) and not top_k
    loss = _distill.apply(flat, weight, bias, flat_teacher, flat_target, _resolved(opts, triton))
    return loss.reshape(batch) if opts.reduction == "none" else loss
