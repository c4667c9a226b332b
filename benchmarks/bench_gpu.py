"""GPU benchmark of the fused linear cross-entropy (issue 6): one prepared run, one table.

Usage::

    python benchmarks/bench_gpu.py --out DIR          # on a CUDA machine (benchmarks/gpu.sh)
    python benchmarks/bench_gpu.py --dry-run          # on the CPU: imports, plan, tiny run

What it measures, all in one process on one card, forward + backward (gradients of the
hidden states ``x`` and the weight ``W``) in bfloat16 at (N, D, V) = (8192, 4096, 128256)
(Llama 3 8B head) and (8192, 2304, 256000) (Gemma 2 2B head):

* ``crossentropy``: ``crossentropy.torch._triton.triton_linear_cross_entropy`` (cuBLAS
  products around the Triton row kernel; ``-cN`` forces a chunk of N tokens;
  ``-input-dw`` accumulates the weight gradient in bf16 instead of float32);
* ``unfused``: ``F.cross_entropy(x @ W.T, y)``, PyTorch's plain bf16 path;
* ``torch-chunked``: ``F.linear_cross_entropy(x, W, y, options=LinearCrossEntropyOptions())``;
* ``liger`` / ``liger-fp32``: Liger-Kernel's ``LigerFusedLinearCrossEntropyLoss`` (default,
  and with ``accum_dtype=torch.float32``);
* ``cce`` / ``cce_exact``: Cut Cross-Entropy's ``linear_cross_entropy`` with impl ``cce``
  and ``cce_exact`` (older releases have no ``cce_exact``: then ``cce`` with
  ``filter_eps=None``, i.e. no gradient filtering, marked ``*`` in the table).

Method.  The two ceilings are measured once: device-to-device copy bandwidth (bytes read
plus written) and the bf16 rate of an 8192^3 product, both on random data.  Per case:
one call for the errors against a float32 reference (``x``, ``W`` upcast, TF32 off),
relative Frobenius errors of the loss, ``dx`` and ``dW``; one call for memory, from
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, less what was
allocated before (growth, the returned gradients included; ``extra`` is growth less the
gradient buffers); then ``triton.testing.do_bench`` median time with the gradients reset
to None between calls.  FLOP rate counts ``6 N D V``.  A case that raises is reported as
failed with its error, and the run goes on.  ``--budget-s`` stops starting new cases when
the time is spent, so the table is always written.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
import traceback

SHAPES = [(8192, 4096, 128256), (8192, 2304, 256000)]
#: The issue's comparison first; then variants (run last, dropped first when time is short).
IMPLS = ["crossentropy", "unfused", "torch-chunked", "liger", "cce", "cce_exact"]
EXTRA_IMPLS = [
    "crossentropy-c1024",
    "crossentropy-c2048",
    "crossentropy-c4096",
    "crossentropy-input-dw",
    "liger-fp32",
]
DENSE_IMPLS = ["crossentropy", "crossentropy-inplace", "unfused", "liger"]
GiB = 2**30


def _import_status() -> dict[str, str]:
    """Which optional libraries import here, with their versions (or the error)."""
    status = {}
    for name, module in [
        ("torch", "torch"),
        ("triton", "triton"),
        ("liger-kernel", "liger_kernel"),
        ("cut-cross-entropy", "cut_cross_entropy"),
        ("crossentropy._triton", "crossentropy.torch._triton"),
    ]:
        try:
            mod = __import__(module, fromlist=["_"])
            status[name] = getattr(mod, "__version__", "imported")
        except Exception as error:  # report whatever stops the import
            status[name] = f"unavailable ({type(error).__name__}: {error})"[:200]
    for dist in ("liger-kernel", "cut-cross-entropy"):
        if not status[dist].startswith("unavailable"):
            try:
                from importlib.metadata import version

                status[dist] = version(dist)
            except Exception:
                pass
    return status


def linear_step(name: str, x, w, y):
    """A function running forward + backward of ``name``, and a note for the table."""
    import torch
    import torch.nn.functional as F

    note = ""
    if name.startswith("crossentropy"):
        from crossentropy.torch._triton import LinearOptions, triton_linear_cross_entropy

        chunk = int(name.split("-c")[1]) if "-c" in name else None
        weight_grad = "input" if name == "crossentropy-input-dw" else "float32"
        opts = LinearOptions(chunk_size=chunk, weight_grad=weight_grad)

        def loss():
            return triton_linear_cross_entropy(x, w, y, None, opts)
    elif name == "unfused":

        def loss():
            return F.cross_entropy(x @ w.T, y)
    elif name == "torch-chunked":
        options = torch.nn.LinearCrossEntropyOptions()

        def loss():
            return F.linear_cross_entropy(x, w, y, options=options)
    elif name.startswith("liger"):
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        kwargs = {"accum_dtype": torch.float32} if name == "liger-fp32" else {}
        module = LigerFusedLinearCrossEntropyLoss(**kwargs)

        def loss():
            out = module(w, x, y)
            return out[0] if isinstance(out, tuple) else out
    elif name.startswith("cce"):
        from cut_cross_entropy import linear_cross_entropy as cce

        if name == "cce":
            kwargs = {"impl": "cce"}
        else:
            kwargs = {"impl": "cce_exact"}
            try:
                cce(x[:16].detach(), w.detach(), y[:16], **kwargs)
            except Exception:  # an older release: no such preset
                kwargs = {"impl": "cce", "filter_eps": None}
                note = "* cce with filter_eps=None (this release has no cce_exact)"

        def loss():
            return cce(x, w, y, **kwargs)
    else:
        raise ValueError(f"unknown implementation {name!r}")

    def step():
        out = loss()
        out.backward()
        return out

    return step, note


def dense_step(name: str, logits, y):
    """Forward + backward of a dense cross-entropy over ``logits`` (N, V)."""
    import torch.nn.functional as F

    if name.startswith("crossentropy"):
        from crossentropy.torch._triton import DenseOptions, triton_cross_entropy

        # In place, the gradient overwrites the logits, as Liger-Kernel's loss does.
        opts = DenseOptions(inplace=name.endswith("inplace"))

        def loss():
            return triton_cross_entropy(logits, y, None, opts)
    elif name == "unfused":

        def loss():
            return F.cross_entropy(logits, y)
    elif name == "liger":
        from liger_kernel.transformers import LigerCrossEntropyLoss

        module = LigerCrossEntropyLoss()

        def loss():
            out = module(logits, y)
            return out[0] if isinstance(out, tuple) else out
    else:
        raise ValueError(f"unknown implementation {name!r}")

    def step():
        out = loss()
        out.backward()
        return out

    return step


def rel(a, b) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


class Bench:
    """Timing and memory on CUDA (do_bench, allocator stats) or on the CPU (dry run)."""

    def __init__(self, device: str, warmup_ms: int, rep_ms: int):
        self.device = device
        self.warmup_ms = warmup_ms
        self.rep_ms = rep_ms

    def sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def time_ms(self, fn, grads) -> float:
        if self.device == "cuda":
            from triton.testing import do_bench

            return float(
                do_bench(
                    fn,
                    warmup=self.warmup_ms,
                    rep=self.rep_ms,
                    grad_to_none=grads,
                    return_mode="median",
                )
            )
        times = []
        for _ in range(3):
            for g in grads:
                g.grad = None
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return sorted(times)[1]

    def memory(self, fn, grads) -> tuple[float, float]:
        """(growth, growth less the gradients) in bytes; NaN on the CPU."""
        import torch

        for g in grads:
            g.grad = None
        gc.collect()
        if self.device != "cuda":
            fn()
            return math.nan, math.nan
        torch.cuda.empty_cache()
        self.sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        self.sync()
        growth = torch.cuda.max_memory_allocated() - base
        grad_bytes = sum(g.grad.numel() * g.grad.element_size() for g in grads)
        return float(growth), float(growth - grad_bytes)


def ceilings(bench: Bench) -> dict:
    """Copy bandwidth (GB/s, read + write) and bf16 product rate (TFLOP/s), measured once."""
    import torch

    if bench.device != "cuda":
        return {"copy_GBps": math.nan, "bf16_TFLOPs": math.nan}

    def copy_rate() -> float:
        src = torch.randn(2**28, device="cuda")  # 1 GiB of float32
        dst = torch.empty_like(src)
        ms = bench.time_ms(lambda: dst.copy_(src), [])
        return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9

    def product_rate() -> float:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        ms = bench.time_ms(lambda: a @ b, [])
        return 2 * 8192**3 / (ms * 1e-3) / 1e12

    result = {"copy_GBps": copy_rate(), "bf16_TFLOPs": product_rate()}
    torch.cuda.empty_cache()
    return result


def make_inputs(n, d, v, dtype, device, seed=0):
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(n, d, generator=gen, device=device) / d**0.25).to(dtype)
    w = (torch.randn(v, d, generator=gen, device=device) / d**0.25).to(dtype)
    y = torch.randint(0, v, (n,), generator=gen, device=device)
    y[torch.rand(n, generator=gen, device=device) < 0.05] = -100
    return x.requires_grad_(), w.requires_grad_(), y


def linear_reference(x, w, y):
    """float32 loss and gradients (TF32 off), computed densely once per shape."""
    import torch
    import torch.nn.functional as F

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        xf = x.detach().float().requires_grad_()
        wf = w.detach().float().requires_grad_()
        loss = F.cross_entropy(xf @ wf.T, y)
        loss.backward()
        return loss.detach(), xf.grad, wf.grad
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


_CASES: dict = {}


def linear_case(shape, dtype, device):
    """Inputs and float32 reference of a shape, made once and kept for later passes."""
    if shape not in _CASES:
        n, d, v = shape
        x, w, y = make_inputs(n, d, v, dtype, device)
        _CASES[shape] = (x, w, y, *linear_reference(x, w, y))
    return _CASES[shape]


def run_linear(shape, impls, bench, dtype, deadline, ceil) -> list[dict]:
    import torch

    n, d, v = shape
    x, w, y, ref_loss, ref_dx, ref_dw = linear_case(shape, dtype, bench.device)
    rows = []
    for name in impls:
        row = {"kind": "linear", "shape": list(shape), "impl": name, "note": ""}
        rows.append(row)
        if time.monotonic() > deadline:
            row["error"] = "skipped: time budget spent"
            continue
        try:
            step, row["note"] = linear_step(name, x, w, y)
            x.grad = w.grad = None
            loss = step()
            bench.sync()
            row["loss"] = float(loss)
            row["err_loss"] = rel(loss, ref_loss)
            row["err_dx"] = rel(x.grad, ref_dx)
            row["err_dw"] = rel(w.grad, ref_dw)
            if name.startswith("crossentropy"):
                from crossentropy.torch._triton import _linear

                mode = _linear._out_dtype(x.device) or ("blocks" if x.is_cuda else "cpu")
                row["note"] = (
                    "dW accumulated in the input dtype"
                    if name == "crossentropy-input-dw"
                    else f"dW float32 accumulation: {mode}"
                )
            row["growth"], row["extra"] = bench.memory(step, [x, w])
            row["ms"] = bench.time_ms(step, [x, w])
            row["TFLOPs"] = 6 * n * d * v / (row["ms"] * 1e-3) / 1e12
            row["of_mm"] = row["TFLOPs"] / ceil["bf16_TFLOPs"]
        except Exception as error:  # a failing library must not stop the run
            row["error"] = f"{type(error).__name__}: {error}"[:300]
            traceback.print_exc()
        finally:
            x.grad = w.grad = None
            gc.collect()
            if bench.device == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def run_dense(shape, impls, bench, dtype, deadline, ceil) -> list[dict]:
    import torch

    n, v = shape
    gen = torch.Generator(device=bench.device).manual_seed(1)
    logits = (3 * torch.randn(n, v, generator=gen, device=bench.device)).to(dtype)
    y = torch.randint(0, v, (n,), generator=gen, device=bench.device)
    rows = []
    for name in impls:
        row = {"kind": "dense", "shape": [n, v], "impl": name, "note": ""}
        rows.append(row)
        if time.monotonic() > deadline:
            row["error"] = "skipped: time budget spent"
            continue
        x = logits.clone().requires_grad_()
        try:
            step = dense_step(name, x, y)
            step()
            row["growth"], row["extra"] = bench.memory(step, [x])
            row["ms"] = bench.time_ms(step, [x])
            # Least traffic: read the logits, write their gradient.
            row["GBps"] = 2 * n * v * logits.element_size() / (row["ms"] * 1e-3) / 1e9
            row["of_copy"] = row["GBps"] / ceil["copy_GBps"]
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {error}"[:300]
            traceback.print_exc()
        finally:
            del x
            gc.collect()
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def table(rows: list[dict], ceil: dict) -> str:
    out = [
        f"Ceilings measured in this run: copy {_fmt(ceil['copy_GBps'], '.0f')} GB/s "
        f"(read + write), bf16 product {_fmt(ceil['bf16_TFLOPs'], '.0f')} TFLOP/s.",
        "",
        "| N, D, V | impl | median ms | TFLOP/s (6NDV) | of bf16 rate | growth GiB "
        "| extra GiB | loss err | dx err | dW err | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["kind"] != "linear":
            continue
        shape = ", ".join(map(str, r["shape"]))
        if "error" in r:
            out.append(f"| {shape} | {r['impl']} | failed | | | | | | | | {r['error']} |")
            continue
        out.append(
            f"| {shape} | {r['impl']} | {_fmt(r['ms'], '.2f')} | {_fmt(r['TFLOPs'], '.0f')} "
            f"| {_fmt(r['of_mm'], '.0%')} | {_fmt(r['growth'] / GiB, '.2f')} "
            f"| {_fmt(r['extra'] / GiB, '.2f')} | {r['err_loss']:.1e} | {r['err_dx']:.1e} "
            f"| {r['err_dw']:.1e} | {r['note']} |"
        )
    dense = [r for r in rows if r["kind"] == "dense"]
    if dense:
        out += [
            "",
            "Dense row kernel, forward + backward over bf16 logits (N, V) "
            "(bandwidth counts one read and one write of the logits):",
            "",
            "| N, V | impl | median ms | GB/s | of copy | growth GiB |",
            "|---|---|---|---|---|---|",
        ]
        for r in dense:
            shape = ", ".join(map(str, r["shape"]))
            if "error" in r:
                out.append(f"| {shape} | {r['impl']} | failed | | | {r['error']} |")
                continue
            out.append(
                f"| {shape} | {r['impl']} | {_fmt(r['ms'], '.2f')} | {_fmt(r['GBps'], '.0f')} "
                f"| {_fmt(r['of_copy'], '.0%')} | {_fmt(r['growth'] / GiB, '.2f')} |"
            )
    out += ["", *verdicts(rows)]
    return "\n".join(out)


def verdicts(rows: list[dict]) -> list[str]:
    """The issue's targets, checked for ``crossentropy`` (auto chunk) per shape."""
    lines = []
    by = {(tuple(r["shape"]), r["impl"]): r for r in rows if r["kind"] == "linear"}
    for shape in sorted({k[0] for k in by}):
        ours = by.get((shape, "crossentropy"))
        if not ours or "error" in ours:
            lines.append(f"- {shape}: crossentropy did not run")
            continue
        rivals = [by.get((shape, k)) for k in ("liger", "cce_exact", "torch-chunked")]
        rivals = [r for r in rivals if r and "error" not in r]
        fastest = min((r["ms"] for r in rivals), default=math.nan)
        exact = by.get((shape, "cce_exact"))
        torch_row = by.get((shape, "unfused"))
        checks = [
            f"time {ours['ms']:.2f} ms <= fastest of liger/cce_exact/torch-chunked "
            f"{fastest:.2f} ms: {ours['ms'] <= fastest}",
            f"rate {ours['of_mm']:.0%} of the bf16 product rate >= 60%: {ours['of_mm'] >= 0.6}",
        ]
        if exact and "error" not in exact:
            checks.append(
                f"growth {ours['growth'] / GiB:.2f} GiB <= cce_exact's "
                f"{exact['growth'] / GiB:.2f} GiB: {ours['growth'] <= exact['growth']}"
            )
        if torch_row and "error" not in torch_row:
            ok = all(ours[k] <= 1.5 * torch_row[k] + 1e-3 for k in ("err_loss", "err_dx", "err_dw"))
            checks.append(f"errors no worse than PyTorch bf16 (x1.5 + 1e-3): {ok}")
        lines.append(f"- {', '.join(map(str, shape))}: " + "; ".join(checks))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="*", default=[",".join(map(str, s)) for s in SHAPES])
    parser.add_argument("--impls", nargs="*", default=IMPLS)
    parser.add_argument("--extra-impls", nargs="*", default=EXTRA_IMPLS)
    parser.add_argument("--dense-impls", nargs="*", default=DENSE_IMPLS)
    parser.add_argument("--warmup-ms", type=int, default=200)
    parser.add_argument("--rep-ms", type=int, default=1500)
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop starting cases after")
    parser.add_argument("--out", default=None, help="folder for results.md and results.json")
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU: check imports and the plan, tiny run"
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        shapes = [tuple(int(s) for s in text.split(",")) for text in args.shapes]
    except ValueError:
        parser.error(f"--shapes takes N,D,V triples, got {args.shapes}")
    if any(len(s) != 3 or min(s) < 1 for s in shapes):
        parser.error(f"--shapes takes positive N,D,V triples, got {args.shapes}")
    known = IMPLS + EXTRA_IMPLS
    for name in args.impls + args.extra_impls:
        if name not in known and not name.startswith("crossentropy-c"):
            parser.error(f"unknown implementation {name!r}; choose from {known}")
        if name.startswith("crossentropy-c") and not name[len("crossentropy-c") :].isdigit():
            parser.error(f"crossentropy-cN takes a chunk size N, got {name!r}")
    for name in args.dense_impls:
        if name not in DENSE_IMPLS:
            parser.error(f"unknown dense implementation {name!r}; choose from {DENSE_IMPLS}")

    import torch

    status = _import_status()
    print("libraries:", json.dumps(status), flush=True)
    for n, d, v in shapes:
        grads = (n * d + v * d) * 2
        print(
            f"plan {n},{d},{v}: 6NDV = {6 * n * d * v / 1e12:.1f} TFLOP; bf16 gradients "
            f"{grads / GiB:.2f} GiB; unfused bf16 logits {n * v * 2 / GiB:.2f} GiB",
            flush=True,
        )
    if args.dry_run:
        if torch.cuda.is_available():
            print("dry run: CUDA is here, but running the CPU dry run anyway")
        device, dtype = "cpu", torch.float32
        shapes, dense_shapes = [(64, 32, 1000)], [(64, 1000)]
        bench = Bench("cpu", 0, 0)
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            # Without the interpreter the Triton path cannot run on the CPU: say so.
            print("dry run: TRITON_INTERPRET is off, crossentropy rows will fail on the CPU")
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: use --dry-run on the CPU", file=sys.stderr)
            return 2
        device, dtype = "cuda", torch.bfloat16
        dense_shapes = [(n, v) for n, _, v in shapes]
        bench = Bench(device, args.warmup_ms, args.rep_ms)
        print("device:", torch.cuda.get_device_name(), flush=True)
    deadline = start + args.budget_s
    ceil = ceilings(bench)
    print("ceilings:", json.dumps(ceil), flush=True)
    rows = []
    for shape in shapes:
        rows += run_linear(shape, args.impls, bench, dtype, deadline, ceil)
    for shape in dense_shapes:
        rows += run_dense(shape, args.dense_impls, bench, dtype, deadline, ceil)
    for shape in shapes:
        rows += run_linear(shape, args.extra_impls, bench, dtype, deadline, ceil)
    _CASES.clear()
    order = {name: i for i, name in enumerate(args.impls + args.extra_impls)}
    rows.sort(key=lambda r: (r["kind"], r["shape"], order.get(r["impl"], 0)))
    text = table(rows, ceil)
    header = (
        f"Card: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU (dry run)'}; "
        f"torch {torch.__version__}; libraries {json.dumps(status)}; "
        f"command: python benchmarks/bench_gpu.py {' '.join(argv or sys.argv[1:])}"
    )
    print(header)
    print(text, flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.md"), "w") as f:
            f.write(header + "\n\n" + text + "\n")
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump({"status": status, "ceilings": ceil, "rows": rows}, f, indent=1)
    print(f"bench_gpu: {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
