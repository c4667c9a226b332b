"""One training step of a Hugging Face Llama, patched by crossentropy.transformers or not.

Usage::

    python benchmarks/bench_transformers.py                 # the issue's table
    python benchmarks/bench_transformers.py --vocabs 32768 --runs 2   # quicker

The model: ``LlamaForCausalLM`` from a random config (hidden 512, intermediate 1536, 2
layers, 8 heads, untied head), float32, batch 2 x 1,024 tokens, vocabularies of 128,256
(Llama 3) and 151,936 (Qwen2).  The step: forward with labels, backward, ``AdamW.step()``,
``zero_grad()``.  ``unpatched`` is the model's own ``ForCausalLMLoss`` on its logits;
``patched`` the same model after ``crossentropy.transformers.patch(model)``.

Method: ``_harness.py``.  Every (vocabulary, mode) runs in a fresh Python process, with
``MALLOC_MMAP_THRESHOLD_`` set.  There the model and optimizer are built and one warm-up
step is taken (it allocates AdamW's state); then each timed step runs with ``VmHWM``
reset through ``/proc/self/clear_refs`` and read after it.  ``step growth`` is peak minus
the starting ``VmRSS``: what the step allocated on top of the model, its gradients'
previous buffers and the optimizer state (the logits, activations and gradients);
``process peak`` is the whole process's ``VmHWM`` over the timed steps.  Times are
medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from _harness import MMAP_ENV, MiB, reset_peak, run_worker, status

VOCABS = [128256, 151936]
MODES = ["unpatched", "patched"]


def _child(vocab: int, mode: str, runs: int, tokens: int) -> dict:
    import torch
    import transformers

    from crossentropy.transformers import patch

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=8,
        max_position_embeddings=tokens,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config).float().train()
    if mode == "patched":
        patch(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (2, tokens))

    def step() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        return float(loss)

    losses = [step()]  # warm-up: AdamW state, one-time allocations
    times, growth, peaks = [], [], []
    for _ in range(runs):
        reset_peak()
        base = status("VmRSS")
        start = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
        peak = status("VmHWM")
        growth.append(peak - base)
        peaks.append(peak)
    return {
        "vocab": vocab,
        "mode": mode,
        "time_s": statistics.median(times),
        "growth_mib": max(growth) / MiB,
        "peak_mib": max(peaks) / MiB,
        "first_loss": losses[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocabs", default=",".join(map(str, VOCABS)))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--child", nargs=2, metavar=("VOCAB", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        vocab, mode = int(args.child[0]), args.child[1]
        print(json.dumps(_child(vocab, mode, args.runs, args.tokens)))
        return
    rows = []
    for vocab in map(int, args.vocabs.split(",")):
        for mode in MODES:
            cmd = ["--child", vocab, mode, "--runs", args.runs, "--tokens", args.tokens]
            rows.append(run_worker(__file__, cmd, env=MMAP_ENV))
            print(f"  {vocab} {mode}: {rows[-1]['time_s']:.2f} s", file=sys.stderr)
    first = rows[0]
    print(
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs; torch {first['torch']} ({first['threads']} threads), "
        f"transformers {first['transformers']}; batch 2 x {args.tokens} tokens, float32, "
        f"median of {args.runs} steps after 1 warm-up.\n"
    )
    print(
        "| vocabulary | mode | step s | x unpatched | step growth MiB | x unpatched "
        "| process peak MiB | x unpatched | first loss |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    by = {(r["vocab"], r["mode"]): r for r in rows}
    for r in rows:
        ref = by[(r["vocab"], "unpatched")]
        print(
            f"| {r['vocab']:,} | {r['mode']} | {r['time_s']:.2f} | "
            f"{r['time_s'] / ref['time_s']:.2f}x | {r['growth_mib']:,.0f} | "
            f"{r['growth_mib'] / ref['growth_mib']:.2f}x | {r['peak_mib']:,.0f} | "
            f"{r['peak_mib'] / ref['peak_mib']:.2f}x | {r['first_loss']:.4f} |"
        )


if __name__ == "__main__":
    main()
