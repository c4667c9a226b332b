"""Triton kernels: the row kernel of every loss, and two small scaling kernels.

The row kernel reads one row of logits ``x`` (length ``C``) and, with
``z = cap(x) / T`` (``inv_temp = 1 / T``),
``lse = logsumexp(z)``, ``q = exp(z - lse)``, the smoothed target
``t' = (1 - eps) t + eps / C`` (``t`` one-hot for a class index) and class weights ``w``:

* ``A = sum_c w_c t'_c`` and ``B = sum_c w_c t'_c z_c``, so ``H = A lse - B``;
* the KL divergence ``D = H + sum_c w_c t'_c log t'_c`` (``0 log 0 = 0``, and a zero
  ``w_c t'_c`` at a ``-inf`` logit adds 0 to ``B``);
* the stored loss is ``H`` (or ``D``) without the z-loss; the host adds the z-loss
  ``z_loss * lse^2`` of every counted token (the same for every class weight) from the
  stored ``lse``, which is 0 for an ignored token;
* the gradient ``dL/dx_j = [ q_j (s A + 2 z_loss sz lse) - s w_j t'_j ] (1 - r_j^2) / T``,
  ``r_j = tanh(x_j / cap)`` (1 - r^2 omitted without a cap),
  ``s`` and ``sz`` the row's scales of the cross-entropy and the z-loss parts (the
  reduction's factors, or the upstream gradient).

Pass 1 is one read of the row with an online log-sum-exp in float32 (float64 for float64
logits); pass 2, only when a gradient is asked for, reads the row again and writes the
gradient, possibly over the logits themselves (each element is read before it is written,
by the same program).  For a class index the one-hot sums are taken in closed form, so
only ``x_y`` is read besides the row.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The reductions of tl.max / tl.sum, named directly: the interpreter runs these two
# combine functions natively even when Triton was imported before TRITON_INTERPRET was set
# (tl.max, tl.sum and tl.zeros are then compiled-only functions, so none is used here).
_MAX = tl.standard._elementwise_max
_MIN_INT = tl.standard._elementwise_min
_SUM = tl.standard._sum_combine


@triton.jit
def _capped(x, cap, HAS_CAP: tl.constexpr):
    """``cap tanh(x / cap)`` when ``HAS_CAP``, with ``tanh(u) = 1 - 2 / (exp(2u) + 1)``:
    exact at both ends, never NaN."""
    if HAS_CAP:
        x = cap * (1.0 - 2.0 / (tl.exp(2.0 * x / cap) + 1.0))
    return x


@triton.jit
def row_kernel(
    X,
    stride_x,
    G,
    stride_g,
    T,
    stride_t,
    W,
    LOSS,
    LSE,
    SCALE,
    stride_s,
    ZSCALE,
    stride_zs,
    C,
    ignore_index,
    eps,
    z_loss,
    cap,
    inv_temp,
    ACC: tl.constexpr,
    SOFT: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    HAS_ZLOSS: tl.constexpr,
    HAS_CAP: tl.constexpr,
    DIVERGENCE: tl.constexpr,
    GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    cols = tl.arange(0, BLOCK)
    zero = tl.full([], 0.0, ACC)
    eps = zero + eps
    off = eps / C
    on = 1.0 - eps

    if SOFT:
        counted = True
    else:
        y = tl.load(T + row * stride_t).to(tl.int64)
        counted = y != ignore_index
        invalid = counted & ((y < 0) | (y >= C))
        y_safe = tl.where(counted & ~invalid, y, 0)
        if HAS_WEIGHT:  # noqa: SIM108 (constexpr branches read best as statements)
            w_y = tl.load(W + y_safe).to(ACC)
        else:
            w_y = zero + 1.0

    loss = zero
    lse = zero
    big_a = zero
    if counted:
        # ---- pass 1: online log-sum-exp and the target sums, one read of the row
        m = zero - float("inf")
        s = zero
        sum_w = zero  # sum_c w_c
        sum_wz = zero  # sum_c w_c z_c
        sum_wt = zero  # soft: sum_c w_c t'_c
        sum_wtz = zero  # soft: sum_c w_c t'_c z_c
        sum_ent = zero  # soft: sum_c w_c t'_c log t'_c
        for start in range(0, C, BLOCK):
            idx = start + cols
            mask = idx < C
            z = _capped(tl.load(x_row + idx, mask=mask, other=0.0).to(ACC), cap, HAS_CAP)
            z = z * inv_temp  # exact when T = 1
            z = tl.where(mask, z, -float("inf"))
            m_new = tl.maximum(m, tl.reduce(z, 0, _MAX))
            s = s * tl.exp(m - m_new) + tl.reduce(tl.exp(z - m_new), 0, _SUM)
            m = m_new
            zc = tl.where(mask, z, 0.0)
            if HAS_WEIGHT:
                w = tl.load(W + idx, mask=mask, other=0.0).to(ACC)
            else:
                w = tl.where(mask, 1.0, 0.0).to(ACC)
            if SOFT:
                t = tl.load(T + row * stride_t + idx, mask=mask, other=0.0).to(ACC)
                tp = on * t + off
                wt = tl.where(mask, w * tp, 0.0)
                sum_wt += tl.reduce(wt, 0, _SUM)
                # 0 * -inf = 0: a class without target mass adds nothing.
                sum_wtz += tl.reduce(wt * tl.where(wt == 0.0, 0.0, zc), 0, _SUM)
                if DIVERGENCE:
                    sum_ent += tl.reduce(wt * tl.log(tl.where(tp > 0.0, tp, 1.0)), 0, _SUM)
            else:
                if HAS_WEIGHT:
                    sum_w += tl.reduce(w, 0, _SUM)
                if SMOOTH:
                    sum_wz += tl.reduce(w * zc, 0, _SUM)
        lse = m + tl.log(s)

        if SOFT:
            big_a = sum_wt
            loss = big_a * lse - sum_wtz
            if DIVERGENCE:
                loss += sum_ent
        else:
            if not HAS_WEIGHT:
                sum_w = zero + C
            z_y = _capped(tl.load(x_row + y_safe).to(ACC), cap, HAS_CAP) * inv_temp
            big_a = on * w_y + off * sum_w
            loss = on * w_y * (lse - z_y)
            if SMOOTH:
                loss += off * (sum_w * lse - sum_wz)
            if DIVERGENCE:
                # Closed form of sum_c w_c t'_c log t'_c for the smoothed one-hot target.
                p_on = on + off
                loss += w_y * p_on * tl.log(p_on)
                if SMOOTH:
                    loss += (sum_w - w_y) * off * tl.log(off)
        if not SOFT:
            loss = tl.where(invalid, float("nan"), loss)
    tl.store(LOSS + row, loss)
    tl.store(LSE + row, lse)

    if GRAD:
        g_row = G + row * stride_g
        if counted:
            scale = tl.load(SCALE + row * stride_s).to(ACC)
            coef = big_a * scale
            if HAS_ZLOSS:
                zscale = tl.load(ZSCALE + row * stride_zs).to(ACC)
                coef += 2.0 * z_loss * zscale * lse
            if not SOFT:
                # An out-of-range label poisons its row's gradient, as it does the loss.
                coef = tl.where(invalid, float("nan"), coef)
            # ---- pass 2: the gradient, written over the row (or into G)
            for start in range(0, C, BLOCK):
                idx = start + cols
                mask = idx < C
                z = tl.load(x_row + idx, mask=mask, other=0.0).to(ACC)
                if HAS_CAP:
                    r = 1.0 - 2.0 / (tl.exp(2.0 * z / cap) + 1.0)
                    z = cap * r
                z = z * inv_temp
                q = tl.exp(z - lse)
                if HAS_WEIGHT:  # noqa: SIM108
                    w = tl.load(W + idx, mask=mask, other=0.0).to(ACC)
                else:
                    w = 1.0
                if SOFT:
                    t = tl.load(T + row * stride_t + idx, mask=mask, other=0.0).to(ACC)
                    target = w * (on * t + off)
                else:
                    target = w * (tl.where(idx == y_safe, on, 0.0) + off)
                g = (q * coef - target * scale) * inv_temp
                if HAS_CAP:
                    g = g * (1.0 - r * r)
                tl.store(g_row + idx, g.to(G.dtype.element_ty), mask=mask)
        else:
            zeros = tl.full([BLOCK], 0.0, G.dtype.element_ty)
            for start in range(0, C, BLOCK):
                idx = start + cols
                tl.store(g_row + idx, zeros, mask=idx < C)


@triton.jit
def scale_kernel(X, N, GRAD, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """``X *= grad`` in place, skipped on the device when ``grad == 1`` (no host sync)."""
    g = tl.load(GRAD).to(ACC)
    if g != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        x = tl.load(X + offs, mask=mask).to(ACC)
        tl.store(X + offs, (x * g).to(X.dtype.element_ty), mask=mask)


@triton.jit
def cast_scale_kernel(SRC, DST, N, GRAD, BLOCK: tl.constexpr):
    """``DST = (SRC * grad).to(DST.dtype)``; SRC and DST must not overlap within a launch."""
    g = tl.load(GRAD).to(tl.float32)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(SRC + offs, mask=mask).to(tl.float32)
    tl.store(DST + offs, (x * g).to(DST.dtype.element_ty), mask=mask)


@triton.jit
def stats_kernel(
    X,
    stride_x,
    T,
    M,
    ARG,
    S0,
    S1,
    S2,
    ZY,
    C,
    start,
    ignore_index,
    cap,
    inv_temp,
    ACC: tl.constexpr,
    HAS_TARGET: tl.constexpr,
    HAS_CAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The statistics mode: one row's shifted sums (``_stats``' notes), one read.

    With ``z = cap(x) / T`` over this slice (global indices from ``start``) and ``m`` the
    row's maximum: ``M = m``, ``ARG`` the lowest index of it, ``S0 = sum e``,
    ``S1 = sum e (z - m)``, ``S2 = sum e^2`` with ``e = exp(z - m)`` (``m`` made 0 when
    the row is all ``-inf``), ``ZY`` the target's ``z`` when it lies in the slice, else 0.
    Online: when the running maximum grows from ``m`` to ``m'``, the sums so far move to
    ``m'`` (``d = m - m'``): ``S0 e^d``, ``e^d (S1 + d S0)``, ``S2 e^{2d}``.
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    cols = tl.arange(0, BLOCK)
    zero = tl.full([], 0.0, ACC)
    m = zero - float("inf")
    s0 = zero
    s1 = zero
    s2 = zero
    arg = tl.full([], 0, tl.int64)
    for begin in range(0, C, BLOCK):
        idx = begin + cols
        mask = idx < C
        z = _capped(tl.load(x_row + idx, mask=mask, other=0.0).to(ACC), cap, HAS_CAP)
        z = tl.where(mask, z * inv_temp, -float("inf"))
        block_max = tl.reduce(z, 0, _MAX)
        first = tl.reduce(tl.where(z == block_max, idx, C), 0, _MIN_INT)
        # Strictly greater: on a tie the earlier (lower) index stays.
        arg = tl.where(block_max > m, first.to(tl.int64), arg)
        m_new = tl.maximum(m, block_max)
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        d = tl.where(m == -float("inf"), 0.0, m - shift)
        alpha = tl.where(m == -float("inf"), 0.0, tl.exp(d))
        t = z - shift
        e = tl.exp(t)
        et = e * tl.where(e > 0.0, t, 0.0)  # 0 * -inf = 0: a masked class adds nothing
        s1 = alpha * (s1 + d * s0) + tl.reduce(et, 0, _SUM)
        s0 = alpha * s0 + tl.reduce(e, 0, _SUM)
        s2 = alpha * alpha * s2 + tl.reduce(e * e, 0, _SUM)
        m = m_new
    tl.store(M + row, m)
    tl.store(ARG + row, arg + start)
    tl.store(S0 + row, s0)
    tl.store(S1 + row, s1)
    tl.store(S2 + row, s2)
    if HAS_TARGET:
        y = tl.load(T + row).to(tl.int64)
        hit = (y != ignore_index) & (y >= start) & (y < start + C)
        z_y = _capped(tl.load(x_row + tl.where(hit, y - start, 0)).to(ACC), cap, HAS_CAP)
        tl.store(ZY + row, tl.where(hit, z_y * inv_temp, 0.0))


@triton.jit
def stats_grad_kernel(
    X,
    stride_x,
    T,
    LSE,
    COEF,
    GS,
    GC,
    GLP,
    C,
    start,
    ignore_index,
    cap,
    inv_temp,
    ACC: tl.constexpr,
    HAS_ENTROPY: tl.constexpr,
    HAS_COLLISION: tl.constexpr,
    HAS_LOGPROB: tl.constexpr,
    HAS_CAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``dL/dx`` of the statistics over one row, written over the row in place::

        dL/dz_c = q_c (COEF - g_S log q_c + 2 g_C q_c) + g_lp [c = y]

    ``COEF = g_L - g_lp - g_S S - 2 g_C C`` per row (host), then times
    ``(1 - tanh^2) / T``.  ``log q`` is floored at -1e4, where ``q`` is 0 in every dtype.
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    cols = tl.arange(0, BLOCK)
    lse = tl.load(LSE + row).to(ACC)
    coef = tl.load(COEF + row).to(ACC)
    g_s = tl.load(GS + row).to(ACC) if HAS_ENTROPY else 0.0
    g_c = tl.load(GC + row).to(ACC) if HAS_COLLISION else 0.0
    y_local = tl.full([], -1, tl.int64)
    g_lp = tl.full([], 0.0, ACC)
    if HAS_LOGPROB:
        y = tl.load(T + row).to(tl.int64)
        hit = (y != ignore_index) & (y >= start) & (y < start + C)
        y_local = tl.where(hit, y - start, -1)
        g_lp = tl.load(GLP + row).to(ACC)
    for begin in range(0, C, BLOCK):
        idx = begin + cols
        mask = idx < C
        z = tl.load(x_row + idx, mask=mask, other=0.0).to(ACC)
        if HAS_CAP:
            r = 1.0 - 2.0 / (tl.exp(2.0 * z / cap) + 1.0)
            z = cap * r
        logq = tl.maximum(z * inv_temp - lse, -1e4)
        q = tl.exp(logq)
        g = q * (coef - g_s * logq + 2.0 * g_c * q)
        g = (g + tl.where(idx == y_local, g_lp, 0.0)) * inv_temp
        if HAS_CAP:
            g = g * (1.0 - r * r)
        tl.store(x_row + idx, g.to(X.dtype.element_ty), mask=mask)


@triton.jit
def _logaddexp(a, b):
    hi = tl.maximum(a, b)
    lo = tl.minimum(a, b)
    safe = tl.where(hi == -float("inf"), 0.0, hi)
    return tl.where(hi == -float("inf"), hi, safe + tl.log(1.0 + tl.exp(lo - safe)))


@triton.jit
def _terms(lp, lq, log_b, log_1b, beta, KIND: tl.constexpr):
    """Per class: the loss term and ``g = dL/dq`` of the divergence ``KIND`` (the codes of
    ``_distill``: 0 forward KL, 1 reverse KL, 2 JSD, 3 skew KL, 4 skew reverse KL, 5 TVD)."""
    p = tl.exp(lp)
    q = tl.exp(lq)
    if KIND == 0:
        term = p * tl.where(p > 0.0, lp - lq, 0.0)
        g = q * 0.0
    elif KIND == 1:
        r = tl.where(q > 0.0, lq - lp, 0.0)
        term = q * r
        g = r
    elif KIND == 2:
        lm = _logaddexp(lp + log_b, lq + log_1b)
        term = beta * p * tl.where(p > 0.0, lp - lm, 0.0)
        term += (1.0 - beta) * q * tl.where(q > 0.0, lq - lm, 0.0)
        g = (1.0 - beta) * tl.where(q > 0.0, lq - lm, 0.0)
    elif KIND == 3:
        lm = _logaddexp(lp + log_b, lq + log_1b)
        term = p * tl.where(p > 0.0, lp - lm, 0.0)
        g = -(1.0 - beta) * tl.where(p > 0.0, tl.exp(tl.where(p > 0.0, lp - lm, 0.0)), 0.0)
    elif KIND == 4:
        lm = _logaddexp(lq + log_b, lp + log_1b)
        ratio = tl.where(q > 0.0, lq - lm, 0.0)
        term = q * ratio
        g = ratio + 1.0 - beta * tl.exp(ratio)
    else:
        d = q - p
        term = 0.5 * tl.abs(d)
        g = tl.where(d > 0.0, 0.5, tl.where(d < 0.0, -0.5, 0.0))
    return term, g, p, q


@triton.jit
def divergence_kernel(
    X,
    stride_x,
    TL,
    stride_t,
    Y,
    DIV,
    HARD,
    SCALE,
    C,
    ignore_index,
    cap,
    teacher_cap,
    inv_temp,
    beta,
    log_b,
    log_1b,
    hard_weight,
    ACC: tl.constexpr,
    KIND: tl.constexpr,
    HAS_CAP: tl.constexpr,
    TEACHER_CAP: tl.constexpr,
    HAS_HARD: tl.constexpr,
    GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The divergence mode: one row of the student's logits ``X`` and the teacher's
    ``TL`` (module notes of ``_distill``).  Pass 1: the student's and teacher's
    log-sum-exp at ``T`` (and the student's at 1 for the hard part); pass 2: the loss
    and ``sum q g``; pass 3 (``GRAD``): ``SCALE * dL/dx`` written over ``X``."""
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    t_row = TL + row * stride_t
    cols = tl.arange(0, BLOCK)
    zero = tl.full([], 0.0, ACC)
    mq = zero - float("inf")
    mp = zero - float("inf")
    m1 = zero - float("inf")
    sq = zero
    sp = zero
    s1 = zero
    for begin in range(0, C, BLOCK):
        idx = begin + cols
        mask = idx < C
        zc = _capped(tl.load(x_row + idx, mask=mask, other=0.0).to(ACC), cap, HAS_CAP)
        tc = _capped(tl.load(t_row + idx, mask=mask, other=0.0).to(ACC), teacher_cap, TEACHER_CAP)
        zq = tl.where(mask, zc * inv_temp, -float("inf"))
        zp = tl.where(mask, tc * inv_temp, -float("inf"))
        z1 = tl.where(mask, zc, -float("inf"))
        new_q = tl.maximum(mq, tl.reduce(zq, 0, _MAX))
        new_p = tl.maximum(mp, tl.reduce(zp, 0, _MAX))
        new_1 = tl.maximum(m1, tl.reduce(z1, 0, _MAX))
        sq = sq * tl.exp(mq - new_q) + tl.reduce(tl.exp(zq - new_q), 0, _SUM)
        sp = sp * tl.exp(mp - new_p) + tl.reduce(tl.exp(zp - new_p), 0, _SUM)
        s1 = s1 * tl.exp(m1 - new_1) + tl.reduce(tl.exp(z1 - new_1), 0, _SUM)
        mq = new_q
        mp = new_p
        m1 = new_1
    lse_q = mq + tl.log(sq)
    lse_p = mp + tl.log(sp)
    lse_1 = m1 + tl.log(s1)
    loss = zero
    qg = zero
    for begin in range(0, C, BLOCK):
        idx = begin + cols
        mask = idx < C
        zc = _capped(tl.load(x_row + idx, mask=mask, other=0.0).to(ACC), cap, HAS_CAP)
        tc = _capped(tl.load(t_row + idx, mask=mask, other=0.0).to(ACC), teacher_cap, TEACHER_CAP)
        lq = tl.where(mask, zc * inv_temp - lse_q, -float("inf"))
        lp = tl.where(mask, tc * inv_temp - lse_p, -float("inf"))
        term, g, p, q = _terms(lp, lq, log_b, log_1b, beta, KIND)
        loss += tl.reduce(tl.where(mask, term, 0.0), 0, _SUM)
        qg += tl.reduce(tl.where(mask, q * g, 0.0), 0, _SUM)
    tl.store(DIV + row, loss)
    y_local = tl.full([], -1, tl.int64)
    if HAS_HARD:
        y = tl.load(Y + row).to(tl.int64)
        counted = y != ignore_index
        y_safe = tl.where(counted, y, 0)
        z_y = _capped(tl.load(x_row + y_safe).to(ACC), cap, HAS_CAP)
        tl.store(HARD + row, tl.where(counted, lse_1 - z_y, 0.0))
        y_local = tl.where(counted, y, -1)
    if GRAD:
        s = tl.load(SCALE + row).to(ACC)
        for begin in range(0, C, BLOCK):
            idx = begin + cols
            mask = idx < C
            raw = tl.load(x_row + idx, mask=mask, other=0.0).to(ACC)
            if HAS_CAP:
                r = 1.0 - 2.0 / (tl.exp(2.0 * raw / cap) + 1.0)
                zc = cap * r
            else:
                zc = raw
            tc = _capped(
                tl.load(t_row + idx, mask=mask, other=0.0).to(ACC), teacher_cap, TEACHER_CAP
            )
            lq = tl.where(mask, zc * inv_temp - lse_q, -float("inf"))
            lp = tl.where(mask, tc * inv_temp - lse_p, -float("inf"))
            term, g, p, q = _terms(lp, lq, log_b, log_1b, beta, KIND)
            if KIND == 0:  # noqa: SIM108 (constexpr branches read best as statements)
                grad = q - p
            else:
                grad = q * (g - qg)
            grad = grad * ((1.0 - hard_weight) * s * inv_temp)
            if HAS_HARD:
                soft1 = tl.exp(tl.where(mask, zc - lse_1, -float("inf")))
                grad += hard_weight * s * (soft1 - tl.where(idx == y_local, 1.0, 0.0))
            if HAS_CAP:
                grad = grad * (1.0 - r * r)
            tl.store(x_row + idx, grad.to(X.dtype.element_ty), mask=mask)
