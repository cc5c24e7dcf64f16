"""Serving throughput: requests/s and p50 / p95 latency of ``mmtransfer serve`` at 1, 4 and 16 concurrent
clients, against the same model answering the same requests one at a time (sequential ``model.chat``
calls, the peer) in the same run.

The model: SmolLM2-135M-Instruct (offline weights, see README) as the decoder, with a small random ViT and
an MLP projector (17 image prefix tokens), so generation costs what a small real model costs. ``--decoder
tiny`` (2 layers, width 32) and ``wide`` (4 layers, width 256) are random decoders on the tiny tokenizer,
where a step costs little more at batch 16 than at batch 1 (as on a GPU). Every request is an image and a
question, greedy, up to ``--max-tokens`` new tokens.

The server runs as ``mmtransfer serve`` in a subprocess (its own interpreter, as deployed); each client is a
thread sending its requests one after another over HTTP. Both sides run torch on ``--threads`` threads
(default 1: on a shared CPU, two threads that wait on each other ran up to 7x slower than one in our runs,
which would skew whichever side met more contention). The peer runs before and after the server; the
faster of its two runs is the baseline. A row of in-process batches of 16 shows what one ``model.chat``
call per batch can give at best. Results are printed as a table and written as JSON after every row.

    HF_HUB_OFFLINE=1 python benchmarks/serve_throughput.py --out outputs/bench/serve_throughput.json
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import torch  # noqa: E402
from common import ROOT, Results, load_avg  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from mmtransfer.bundled import ASSETS  # noqa: E402

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
# random Llama decoders on the tiny tokenizer: (layers, width, MLP width, heads, key/value heads)
RANDOM = {"tiny": (2, 32, 64, 2, 1), "wide": (4, 256, 1024, 4, 2)}
VIT = {"name": "timm", "model_name": "vit_tiny_patch16_224", "pretrained": False,
       "model_kwargs": {"img_size": 64, "patch_size": 16, "embed_dim": 192, "depth": 4, "num_heads": 3}}
QUESTIONS = ["What is in this picture?", "Describe the image in one sentence.", "What colours do you see?",
             "How many shapes are there?", "Write a short poem about this picture.", "Is there a circle?",
             "What is on the left side?", "Give the picture a title.", "What would you call this style?",
             "Explain what a square is.", "Which shape is the largest?", "Tell me a fact about triangles.",
             "What is the background colour?", "Summarise the image for a child.", "Is this a photograph?",
             "List three things you notice."]
NAME = "bench"


def build(decoder: str, directory: Path) -> None:
    """Build and save the benchmark model once (the decoder's weights are pretrained, the rest random)."""
    import mmtransfer

    torch.manual_seed(0)
    dec = {"model": SMOLLM2}
    if decoder in RANDOM:
        layers, width, mlp, heads, kv = RANDOM[decoder]
        dec = {"model": f"{decoder}-llama", "pretrained": False, "tokenizer": str(ASSETS / "tiny-tokenizer"),
               "config": {"model_type": "llama", "num_hidden_layers": layers, "hidden_size": width,
                          "intermediate_size": mlp, "num_attention_heads": heads, "num_key_value_heads": kv,
                          "max_position_embeddings": 512, "vocab_size": 434, "bos_token_id": 0, "eos_token_id": 0}}
    model = mmtransfer.build_model({"decoder": dec, "image_encoder": VIT, "image_projector": {"name": "mlp"}})
    model.save_pretrained(str(directory))


def picture(i: int) -> bytes:
    """A small PNG with a few coloured shapes, different for each request."""
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    for k in range(1 + i % 3):
        x, y = (11 * i + 23 * k) % 40, (17 * i + 13 * k) % 40
        draw.ellipse((x, y, x + 20, y + 20), fill=("red", "green", "blue")[(i + k) % 3])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def request(i: int, max_tokens: int) -> dict[str, Any]:
    """The i-th request body (OpenAI chat completions)."""
    url = "data:image/png;base64," + base64.b64encode(picture(i)).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTIONS[i % 16]}]
    return {"model": NAME, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "temperature": 0}


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    """requests/s and p50 / p95 latency (s)."""
    q = statistics.quantiles(latencies, n=20, method="inclusive")
    return {"rps": len(latencies) / wall, "p50": statistics.median(latencies), "p95": q[18]}


def direct(directory: Path, n: int, max_tokens: int, per_call: int = 1) -> tuple[dict[str, float], list[str]]:
    """The same model answering the requests in-process, ``per_call`` conversations per ``model.chat`` call
    (1: the one-at-a-time peer), on one worker thread as in the server."""
    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(_direct, directory, n, max_tokens, per_call).result()


def _direct(directory: Path, n: int, max_tokens: int, per_call: int) -> tuple[dict[str, float], list[str]]:
    import mmtransfer

    model = mmtransfer.load(str(directory))
    convs = []
    for i in range(n):
        parts = request(i, max_tokens)["messages"][0]["content"]
        convs.append([{"role": "user", "content": [{"type": "image", "image": Image.open(io.BytesIO(picture(i)))},
                                                    parts[1]]}])
    model.chat(convs[0], max_new_tokens=max_tokens)  # warm-up
    latencies, answers = [], []
    start = time.perf_counter()
    for i in range(0, n, per_call):
        t0 = time.perf_counter()
        answers += model.chat(convs[i : i + per_call], max_new_tokens=max_tokens, batch_size=per_call)
        latencies += [time.perf_counter() - t0] * len(convs[i : i + per_call])
    return summary(latencies, time.perf_counter() - start), answers


def clients(url: str, n_clients: int, n: int, max_tokens: int) -> tuple[dict[str, float], list[str]]:
    """``n`` requests from ``n_clients`` threads, each sending its share one after another."""
    latencies: list[float] = []
    answers: dict[int, str] = {}

    def client(k: int) -> None:
        with httpx.Client(timeout=600) as http:
            for i in range(k, n, n_clients):
                t0 = time.perf_counter()
                response = http.post(f"{url}/v1/chat/completions", json=request(i, max_tokens))
                response.raise_for_status()
                latencies.append(time.perf_counter() - t0)
                answers[i] = response.json()["choices"][0]["message"]["content"]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(latencies, time.perf_counter() - start), [answers[i] for i in range(n)]


def start_server(directory: Path, max_batch: int, wait_ms: float) -> tuple[subprocess.Popen, str]:
    """``mmtransfer serve`` in a subprocess on a free port; returns it once /health answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mmtransfer.cli", "serve", str(directory), "--port", str(port),
           "--model-name", NAME, "--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same torch threads as the peer
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start within 120 s")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoder", default="smollm2", choices=["smollm2", *RANDOM])
    p.add_argument("--clients", default="1,4,16", help="concurrency levels")
    p.add_argument("--per-client", type=int, default=3, help="requests per client (at least 8 per level)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads, for the peer and the server alike")
    p.add_argument("--work", default=str(ROOT / "outputs" / "bench" / "serve_throughput"))
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench" / "serve_throughput.json"))
    return p.parse_args()


def direct_row(res: Results, directory: Path, args: argparse.Namespace, method: str, n: int,
               per_call: int) -> list[str]:
    """Measure ``direct`` and add its row; returns its answers."""
    stats, answers = direct(directory, n, args.max_tokens, per_call)
    res.add("serve", method, n, None, "requests/s", stats["rps"], p50_s=round(stats["p50"], 3),
            p95_s=round(stats["p95"], 3), clients=1, load=load_avg())
    return answers


def server_rows(res: Results, directory: Path, args: argparse.Namespace, expected: list[str]) -> None:
    """One row per concurrency level against ``mmtransfer serve``; answers are checked against the peer's."""
    proc, url = start_server(directory, args.max_batch, args.batch_wait_ms)
    try:
        httpx.post(f"{url}/v1/chat/completions", json=request(0, args.max_tokens), timeout=600)  # warm-up
        for c in (int(c) for c in args.clients.split(",")):
            n = max(8, c * args.per_client)
            stats, answers = clients(url, c, n, args.max_tokens)
            same = sum(a == b for a, b in zip(answers, expected))
            res.add("serve", f"server, {c} clients", n, None, "requests/s", stats["rps"], peer="one at a time",
                    p50_s=round(stats["p50"], 3), p95_s=round(stats["p95"], 3), clients=c, load=load_avg(),
                    same_answers_as_peer=f"{same}/{min(n, len(expected))}", health=httpx.get(f"{url}/health").json())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    """The peer before and after the server (the CPU is shared: the faster peer run is the baseline), and
    static batches of 16 in-process: what one ``model.chat`` call per batch can give at best."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    directory = Path(args.work) / f"model-{args.decoder}"
    if not (directory / "config.json").exists():
        build(args.decoder, directory)
    res = Results("serve_throughput", args.out)
    expected = direct_row(res, directory, args, "model.chat, one at a time (before)", 8, 1)
    direct_row(res, directory, args, "model.chat, 16 conversations per call", 16, 16)
    server_rows(res, directory, args, expected)
    direct_row(res, directory, args, "model.chat, one at a time (after)", 8, 1)
    base = max(r["value"] for r in res.rows if "one at a time" in r["method"])
    print("\n| clients | requests | requests/s | p50 latency (s) | p95 latency (s) | vs one at a time |")
    print("|---|---|---|---|---|---|")
    for row in res.rows:
        print(f"| {row['method']} | {row['data_size']} | {row['value']:.2f} | {row['p50_s']:.2f} | "
              f"{row['p95_s']:.2f} | {row['value'] / base:.2f}x |")


if __name__ == "__main__":
    main()
