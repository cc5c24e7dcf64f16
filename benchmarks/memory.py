"""Peak memory (RSS) to build a model and take one LoRA training step, per storage precision of the frozen parts.

A SmolLM2-1.7B-shaped decoder (random weights from a Llama config with its sizes: no download) with a frozen
ViT-B/16 image encoder (timm, random weights) and an MLP projector, LoRA on the decoder; batch 1, one 224 px
image and about 32 text tokens. Rows, each measured in its own subprocess (``ru_maxrss`` of that process):

* ``fp32``: everything fp32;
* ``bf16``: ``decoder.dtype: bf16`` and ``image_encoder.dtype: bf16`` (the frozen base and encoder in bf16,
  adapters and projector fp32);
* ``4bit``: ``decoder.quantization: {bits: 4}`` (bitsandbytes NF4 base, QLoRA) with a bf16 encoder. The
  quantised base loads through ``from_pretrained``, so a first subprocess writes the random decoder to disk
  in bf16 (``<work>/decoder``, about 3.4 GB; not counted).

    python benchmarks/memory.py                  # all rows, a few minutes on 2 CPU cores
    python benchmarks/memory.py --rows fp32,bf16 # some rows

Prints a table and writes ``outputs/bench/memory.json`` after each row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_1_7B = {"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 24, "num_attention_heads": 32,
                "num_key_value_heads": 32, "intermediate_size": 8192, "vocab_size": 49152,
                "max_position_embeddings": 8192, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": 0}
IMAGE_ENCODER = {"name": "timm", "model_name": "vit_base_patch16_224", "pretrained": False}
ROWS = ("fp32", "bf16", "4bit")
TARGETS = {"bf16": 0.55, "4bit": 0.35}  # peak RSS as a fraction of the fp32 row's


def model_config(row: str, work: Path) -> dict[str, Any]:
    """The mmtransfer model config of one row."""
    decoder: dict[str, Any] = {"model": "smollm2-1.7b-shaped", "pretrained": False, "config": dict(SMOLLM2_1_7B),
                               "tokenizer": "mmtransfer/tiny-tokenizer"}
    encoder = dict(IMAGE_ENCODER)
    if row in ("bf16", "4bit"):
        decoder["dtype"], encoder["dtype"] = "bf16", "bf16"
    if row == "4bit":
        decoder |= {"model": str(work / "decoder"), "pretrained": True, "config": None, "quantization": {"bits": 4}}
    return {"decoder": decoder, "image_encoder": encoder, "image_projector": {"name": "mlp"},
            "trainable": {"decoder": "lora"}}


def write_decoder(work: Path) -> None:
    """Save the random SmolLM2-1.7B-shaped decoder in bf16 (the 4-bit row's "pretrained" weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (work / "decoder" / "config.json").exists():
        return
    cfg = dict(SMOLLM2_1_7B)
    hf_config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).save_pretrained(work / "decoder")


def measure(row: str, work: Path) -> dict[str, Any]:
    """Build the row's model and take one training step; peak RSS and times of this process."""
    import torch
    from PIL import Image

    from mmtransfer import build_model

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(model_config(row, work))
    built_rss, t_build, file_backed = _peak_mb(), time.perf_counter() - t0, _file_backed_mb()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = model.processor.from_prompts(["<image> Describe the picture."],
                                         targets=["A small red square on a plain white ground."],
                                         image=[Image.new("RGB", (224, 224), "red")])
    t1 = time.perf_counter()
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    return {"row": row, "peak_rss_mb": _peak_mb(), "after_build_mb": built_rss, "file_backed_mb": file_backed,
            "build_s": round(t_build, 1),
            "step_s": round(time.perf_counter() - t1, 1), "loss": round(loss.item(), 4),
            "text_tokens": int(batch["input_ids"].shape[1]), "trainable_params": sum(p.numel() for p in params),
            "stored_mb": round(sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20)}


def _peak_mb() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def _file_backed_mb() -> int | None:
    """Resident pages of memory-mapped files now (e.g. a checkpoint), part of RSS; None off Linux."""
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    except OSError:
        return None
    return round(int(status["RssFile"].split()[0]) / 1024)


def _child(args: list[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Run this script with ``args`` in a fresh process; (its JSON result or None, the reason when none)."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return None, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1][:300]
    return json.loads(lines[-1]), ""


def _four_bit_unsupported() -> str | None:
    """Why the 4-bit row cannot run here, or None."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'mmtransfer[quantization]')"
    return None


def run_rows(rows: list[str], work: Path, out: Path, timeout: float) -> list[dict[str, Any]]:
    """Measure each row in its own process; write ``out`` after each."""
    results: list[dict[str, Any]] = []
    for row in rows:
        why = _four_bit_unsupported() if row == "4bit" else None
        if row == "4bit" and why is None:
            _, why = _child(["--write-decoder", "--work", str(work)], timeout)
            why = why and f"writing the decoder failed: {why}"
        result, why = (None, why) if why else _child(["--child", row, "--work", str(work)], timeout)
        results.append(result or {"row": row, "error": why})
        _ratios(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": results, "targets": TARGETS, "load_avg": list(os.getloadavg()),
                                   "decoder": SMOLLM2_1_7B, "image_encoder": IMAGE_ENCODER}, indent=2))
        print(f"{row}: {results[-1]}", flush=True)
    return results


def _ratios(results: list[dict[str, Any]]) -> None:
    base = next((r["peak_rss_mb"] for r in results if r["row"] == "fp32" and "peak_rss_mb" in r), None)
    for r in results:
        if base and "peak_rss_mb" in r:
            r["vs_fp32"] = round(r["peak_rss_mb"] / base, 3)
            r["target"] = TARGETS.get(r["row"])


def table(results: list[dict[str, Any]]) -> str:
    """The rows as Markdown."""
    lines = ["| row | peak RSS (MB) | after build (MB) | of it file-backed | stored weights (MB) | vs fp32 | target "
             "| build s | step s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | not run: {r['error']} | | | | | | | |")
            continue
        target = f"<= {r['target']}" if r.get("target") else ""
        lines.append(f"| {r['row']} | {r['peak_rss_mb']} | {r['after_build_mb']} | {r['file_backed_mb']} | "
                     f"{r['stored_mb']} | {r.get('vs_fp32', '')} | {target} | {r['build_s']} | {r['step_s']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--work", default=str(ROOT / "outputs" / "bench" / "memory"))
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "memory.json"))
    p.add_argument("--timeout", type=float, default=900, help="seconds per row")
    p.add_argument("--child", choices=ROWS, help=argparse.SUPPRESS)
    p.add_argument("--write-decoder", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    work = Path(args.work)
    if args.write_decoder:
        write_decoder(work)
        print("{}")
    elif args.child:
        print(json.dumps(measure(args.child, work)))
    else:
        print(table(run_rows(args.rows.split(","), work, Path(args.out), args.timeout)))


if __name__ == "__main__":
    main()
