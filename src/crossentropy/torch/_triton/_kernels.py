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
_SUM = tl.standard._sum_combine


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
            z = tl.load(x_row + idx, mask=mask, other=0.0).to(ACC)
            if HAS_CAP:
                # tanh(u) = 1 - 2 / (exp(2u) + 1): exact at both ends, never NaN.
                z = cap * (1.0 - 2.0 / (tl.exp(2.0 * z / cap) + 1.0))
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
            z_y = tl.load(x_row + y_safe).to(ACC)
            if HAS_CAP:
                z_y = cap * (1.0 - 2.0 / (tl.exp(2.0 * z_y / cap) + 1.0))
            z_y = z_y * inv_temp
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
