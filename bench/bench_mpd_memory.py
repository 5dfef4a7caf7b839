"""Benchmark (not a test): streaming MPD's peak memory stays flat as the checkpoint grows.

Builds two pairs of synthetic LLaMA-style checkpoints in bf16, sharded, at 1x and 4x the parameter count
(4x: hidden size and vocabulary doubled, so every matrix is 4x larger), then measures, each in a fresh
subprocess, how far the peak resident set (``VmHWM`` in ``/proc/self/status``, reset through
``/proc/self/clear_refs`` after imports) rises while computing the parameter difference:

* ``streaming``: ``cft_utils.checkpoints.parameter_difference`` (one row-chunk of one tensor at a time);
* ``full-load``: a control that loads both checkpoints whole with ``safetensors.torch.load_file``, to show
  the measurement does see memory that grows with the model.

Each mode runs ``--reps`` times per scale, streaming and full-load alternating. Ratios (medians): time of
streaming / full-load at 4x (target <= 1.5), and the peak-RSS rise at 4x as a multiple of one checkpoint's size
for each mode (flat: streaming stays far below 1x while full-load grows with the model). Written to
``bench/results/mpd_memory.json`` for bench/RESULTS.md.

Run from the repository root (Linux only; about a minute, ~0.7 GB of temporary disk)::

    .venv/bin/python bench/bench_mpd_memory.py
    .venv/bin/python bench/bench_mpd_memory.py --quick       # smaller checkpoints, 1 repetition
    .venv/bin/python bench/bench_mpd_memory.py --hidden 1024 --layers 8 --keep /tmp/mpd-bench
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build_checkpoint(out: Path, hidden: int, layers: int, vocab: int, seed: int, shard_mib: int) -> int:
    """Write a sharded bf16 LLaMA-style checkpoint tensor by tensor; return its parameter count."""
    import torch
    from safetensors.torch import save_file

    inter = 3 * hidden
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for m in ("q", "k", "v", "o"):
            shapes[p + f"self_attn.{m}_proj.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.up_proj.weight"] = (inter, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, inter)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    shard, shard_bytes, n_shard, weight_map = {}, 0, 0, {}

    def flush():
        nonlocal shard, shard_bytes, n_shard
        if shard:
            n_shard += 1
            name = f"model-{n_shard:05d}.safetensors"
            save_file(shard, out / name, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard, shard_bytes = {}, 0

    for name, shape in shapes.items():
        t = (0.02 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        if shard_bytes + t.numel() * 2 > shard_mib * 2**20:
            flush()
        shard[name] = t
        shard_bytes += t.numel() * 2
    flush()
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": hidden, "num_attention_heads": max(1, hidden // 64),
        "num_hidden_layers": layers, "tie_word_embeddings": False}))
    return sum(math.prod(s) for s in shapes.values())


def measure(mode: str, dir_a: str, dir_b: str, chunk_elems: int) -> dict:
    """Run in a fresh process: peak RSS rise (KiB) while diffing two checkpoints."""
    import torch  # noqa: F401  (imported before the baseline so import cost is not counted)
    from safetensors.torch import load_file

    from cft_utils.checkpoints import parameter_difference

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    if mode == "streaming":
        total = parameter_difference(dir_a, dir_b, chunk_elems=chunk_elems).total_l2
    else:
        sq = 0.0
        a = {}
        for idx_dir, store in ((dir_a, a), (dir_b, None)):
            index = json.loads((Path(idx_dir) / "model.safetensors.index.json").read_text())["weight_map"]
            loaded = {}
            for f in sorted(set(index.values())):
                loaded.update(load_file(Path(idx_dir) / f))
            if store is not None:
                a = loaded
            else:
                sq = sum(float((a[k].double() - v.double()).square().sum()) for k, v in loaded.items())
        total = math.sqrt(sq)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {"mode": mode, "baseline_kib": baseline, "peak_kib": peak, "rise_kib": peak - baseline,
            "seconds": seconds, "total_l2": total}


def _run_child(mode: str, a: Path, b: Path, chunk_elems: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, str(a), str(b), "--chunk-elems", str(chunk_elems)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def write_summary(rows: list[dict], chunk: int, args) -> None:
    """The ratios for bench/RESULTS.md (medians over repetitions)."""
    from benchlib import ratio, write_result

    def pick(mode, scale, key):
        return [r[key] for r in rows if r["mode"] == mode and r["scale"] == scale]

    four_mib = pick("streaming", "4x", "checkpoint_mib")[0]
    reps = len(pick("streaming", "4x", "seconds"))
    ratios = [
        ratio("streaming MPD vs plain load (time, 4x checkpoints)", "checkpoints.parameter_difference (streaming)",
              "safetensors load_file of both checkpoints", pick("streaming", "4x", "seconds"),
              pick("full-load", "4x", "seconds"), higher_is_better=True, unit="x time", target="<= 1.5"),
        ratio("streaming MPD: peak RSS rise at 4x / checkpoint size", "streaming", "one 4x checkpoint (MiB)",
              [r / 1024 for r in pick("streaming", "4x", "rise_kib")], [four_mib] * reps,
              unit="x checkpoint", target="flat (<< 1)"),
        ratio("plain load: peak RSS rise at 4x / checkpoint size", "full-load", "one 4x checkpoint (MiB)",
              [r / 1024 for r in pick("full-load", "4x", "rise_kib")], [four_mib] * reps,
              unit="x checkpoint"),
    ]
    write_result("mpd_memory", {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                                "chunk_elems": chunk, "ratios": ratios, "rows": rows}, args.quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512, help="hidden size at 1x (doubled at 4x)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8000, help="vocabulary at 1x (doubled at 4x)")
    parser.add_argument("--shard-mib", type=int, default=32)
    parser.add_argument("--chunk-elems", type=int, default=None, help="default: the library's")
    parser.add_argument("--keep", type=Path, default=None, help="build/keep checkpoints here")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per mode and scale (default 3)")
    parser.add_argument("--quick", action="store_true", help="hidden 256, vocab 4000, 1 repetition")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "DIR_A", "DIR_B"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    from cft_utils.checkpoints import DEFAULT_CHUNK_ELEMS

    chunk = args.chunk_elems or DEFAULT_CHUNK_ELEMS
    reps = args.reps or (1 if args.quick else 3)
    if args.quick:
        args.hidden, args.vocab = min(args.hidden, 256), min(args.vocab, 4000)
    if args.child:
        print(json.dumps(measure(*args.child, chunk)))
        return

    work = args.keep or Path(tempfile.mkdtemp(prefix="mpd-bench-"))
    try:
        rows = []
        for scale, factor in (("1x", 1), ("4x", 2)):
            dirs = []
            for seed in (0, 1):
                d = work / f"{scale}-{seed}"
                if not (d / "model.safetensors.index.json").exists():
                    n = build_checkpoint(d, args.hidden * factor, args.layers, args.vocab * factor, seed,
                                         args.shard_mib)
                else:
                    n = None
                dirs.append(d)
            size_mib = sum(f.stat().st_size for f in dirs[0].glob("*.safetensors")) / 2**20
            shards = len(list(dirs[0].glob("*.safetensors")))
            for _rep, mode in [(i, m) for i in range(reps) for m in ("streaming", "full-load")]:  # A B A B
                r = _run_child(mode, dirs[0], dirs[1], chunk)
                r |= {"scale": scale, "checkpoint_mib": size_mib, "shards": shards, "params": n}
                rows.append(r)
                print(f"{scale}: {size_mib:7.1f} MiB/checkpoint in {shards} shards  {mode:9s}  "
                      f"peak RSS rise {r['rise_kib'] / 1024:7.1f} MiB  ({r['seconds']:.1f} s, "
                      f"||a-b|| = {r['total_l2']:.4f})")
        print(f"chunk_elems = {chunk}")
        for mode in ("streaming", "full-load"):
            one, four = (next(r for r in rows if r["mode"] == mode and r["scale"] == s) for s in ("1x", "4x"))
            print(f"{mode:9s}: peak-rise ratio 4x/1x = {four['rise_kib'] / max(one['rise_kib'], 1):.2f} "
                  f"(checkpoint size ratio {four['checkpoint_mib'] / one['checkpoint_mib']:.2f})")
        stream = [r for r in rows if r["mode"] == "streaming"]
        if abs(stream[0]["total_l2"]) == 0 or any(r["total_l2"] <= 0 for r in rows):
            raise SystemExit("unexpected zero difference between distinct checkpoints")
        write_summary(rows, chunk, args)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
