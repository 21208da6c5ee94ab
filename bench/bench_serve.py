"""Load benchmark of `lmforge serve`: batching on and off, same model, same run.

Starts `lmforge serve` on 127.0.0.1 twice (--max-batch-size N, then 1), drives each with a fixed
number of concurrent clients for a fixed time, and prints requests/s, p50/p99 latency, the error
count and the mean batch size. Every request goes the production path: key check, metering.

--task classification (the default): POST /v1/classify, one short review per request, dynamic
batching. --task generation: POST /v1/completions, a short prompt and --max-tokens new tokens
per request (sampled, temperature 0.8), continuous batching; also prints generated tokens/s. The
generation model has random weights (speed does not depend on them): GPT-2 124M's shape on a
GPU, a small shape on the CPU.

    .venv/bin/python bench/bench_serve.py                    # trains a default-size model first
    .venv/bin/python bench/bench_serve.py --bundle runs/x/model --clients 32 --seconds 20
    .venv/bin/python bench/bench_serve.py --task generation --max-tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

WORDS_POS = ["很好", "不错", "喜欢", "满意", "推荐", "物流很快", "质量很好", "性价比高"]
WORDS_NEG = ["很差", "失望", "难用", "退货", "垃圾", "做工粗糙", "客服不理", "发货太慢"]
FILLER = ["这个", "产品", "物流", "包装", "价格", "颜色", "尺寸", "用了几天", "总体来说", "朋友说"]


def review(rng: random.Random) -> tuple[str, str]:
    label = rng.choice(["pos", "neg"])
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 12))]
    words.insert(rng.randint(0, len(words)), rng.choice(WORDS_POS if label == "pos" else WORDS_NEG))
    return "，".join(words), label


def train_bundle(directory: Path) -> Path:
    """A default-size lmforge encoder (d_model 256, 2 layers, max_length 128), briefly trained."""
    import csv

    import lmforge

    rng = random.Random(0)
    data = directory / "reviews.csv"
    with open(data, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(review(rng) for _ in range(2000))
    cfg = {
        "data": {"path": str(data), "cache_dir": str(directory / "cache")},
        "train": {"max_steps": 60, "eval_every": 60},
        "eval": {"bootstrap": 0, "baselines": False},
    }
    return lmforge.train(cfg, out=directory / "bench", show_progress=False).bundle_dir


def random_gpt_bundle(directory: Path, gpu: bool) -> Path:
    """A generation bundle with random weights: GPT-2 124M's shape (context 1024) on a GPU,
    d_model 256 × 4 layers (context 256) on the CPU; a byte-level BPE of 8,000 tokens."""
    import torch

    from lmforge.bundle import save_bundle
    from lmforge.config import CleanConfig, GenerateConfig
    from lmforge.models import GPT, GPTConfig
    from lmforge.tokenization import train_tokenizer

    rng = random.Random(0)
    texts = ["".join(review(rng)[0]) + " the quick brown fox jumps" for _ in range(3000)]
    tokenizer = train_tokenizer(texts, "byte_bpe", 8000)
    shape = dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072, max_length=1024) if gpu else \
        dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_length=256)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **shape))
    meta = {
        "task": "generation",
        "arch": "gpt",
        "text_column": "text",
        "clean": CleanConfig().model_dump(),
        "max_length": shape["max_length"],
        "generate": GenerateConfig().model_dump(),
        "architecture": model.config.to_dict(),
    }
    save_bundle(directory / "bench-gpt", model, tokenizer, meta)
    return directory / "bench-gpt"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lmforge_cli(*args: str, db: str) -> str:
    command = [sys.executable, "-m", "lmforge", *args, "--db", db]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def start_server(bundle: Path, db: str, max_batch_size: int, max_wait_ms: float) -> tuple:
    port = free_port()
    command = [
        sys.executable, "-m", "lmforge", "serve", f"bench={bundle}", "--port", str(port),
        "--db", db, "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
        "--timeout-s", "300",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("the server did not become ready in 120 s")


async def client_loop(
    port: int, path: str, bodies: list[bytes], key: str, stop_at: float, seed: int, result: dict
) -> None:
    """One client on one keep-alive connection: a request, its whole answer, the next request.

    Plain HTTP/1.1 over asyncio streams: a load generator much lighter than an HTTP library, so
    on a small machine the CPU goes to the server being measured.
    """
    rng = random.Random(seed)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: "
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            body = rng.choice(bodies)
            start = time.perf_counter()
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            reply = await reader.readexactly(length)
            if status == 200:
                result["latencies"].append(time.perf_counter() - start)
                if b'"completion_tokens"' in reply:
                    result["tokens"] += json.loads(reply)["usage"]["completion_tokens"]
            else:
                result["errors"] += 1
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        result["errors"] += 1
    finally:
        writer.close()


def request_bodies(args: argparse.Namespace) -> tuple[str, list[bytes]]:
    """(path, bodies) of the requests the clients send, picked at random."""
    texts = [review(random.Random(i))[0] for i in range(500)]
    if args.task == "classification":
        return "/v1/classify", [json.dumps({"model": "bench", "input": t}).encode() for t in texts]
    bodies = [
        json.dumps({"model": "bench", "prompt": text[:24], "max_tokens": args.max_tokens,
                    "temperature": 0.8}).encode()
        for text in texts
    ]
    return "/v1/completions", bodies


async def drive(
    port: int, key: str, clients: int, seconds: float, path: str, bodies: list[bytes]
) -> dict:
    """`clients` concurrent clients, each one request at a time, until `seconds` have passed."""
    result: dict = {"latencies": [], "errors": 0, "tokens": 0}
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(client_loop(port, path, bodies, key, stop_at, seed, result) for seed in range(clients))
    )
    result["elapsed"] = time.perf_counter() - started
    return result


def mean_batch_size(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    total = re.search(r'lmforge_batch_size_sum\{model="bench"\} (\S+)', text)
    count = re.search(r'lmforge_batch_size_count\{model="bench"\} (\S+)', text)
    return float(total.group(1)) / max(float(count.group(1)), 1.0) if total and count else 0.0


def run_mode(args: argparse.Namespace, bundle: Path, db: str, key: str, batch: int) -> dict:
    server, url = start_server(bundle, db, batch, args.max_wait_ms)
    try:
        path, bodies = request_bodies(args)
        port = int(url.rsplit(":", 1)[1])
        asyncio.run(drive(port, key, args.clients, args.warmup, path, bodies))  # not counted
        result = asyncio.run(drive(port, key, args.clients, args.seconds, path, bodies))
        result["mean_batch"] = mean_batch_size(url)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    lat = sorted(result["latencies"])
    n = len(lat)
    return {
        "max_batch_size": batch,
        "requests": n,
        "rps": n / result["elapsed"],
        "p50_ms": 1000 * statistics.median(lat) if n else float("nan"),
        "p99_ms": 1000 * lat[min(n - 1, int(0.99 * n))] if n else float("nan"),
        "errors": result["errors"],
        "mean_batch": result["mean_batch"],
        "tokens_per_s": result["tokens"] / result["elapsed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: train one)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per mode")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured time per mode")
    parser.add_argument("--max-batch-size", type=int, default=32, help="batching-on setting")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--task", choices=["classification", "generation"],
                        default="classification")
    parser.add_argument("--max-tokens", type=int, default=64, help="generation: new tokens")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lmforge-bench-serve-") as tmp:
        tmp_dir = Path(tmp)
        db = f"sqlite:///{tmp_dir / 'bench.db'}"
        if args.bundle:
            bundle = args.bundle
        elif args.task == "generation":
            import torch

            bundle = random_gpt_bundle(tmp_dir, torch.cuda.is_available())
        else:
            bundle = train_bundle(tmp_dir)
        key = lmforge_cli("keys", "create", "bench", db=db)
        rows = [
            run_mode(args, bundle, db, key, args.max_batch_size),
            run_mode(args, bundle, db, key, 1),
        ]
        (usage,) = json.loads(lmforge_cli("usage", "--json", db=db))

    print(f"\nlmforge serve, {args.clients} clients, {args.seconds:.0f} s per mode, model {bundle}")
    generation = args.task == "generation"
    print(f"{'max batch':>9} {'req/s':>8} " + (f"{'tokens/s':>9} " if generation else "")
          + f"{'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'batch':>6}")
    for row in rows:
        print(
            f"{row['max_batch_size']:>9} {row['rps']:>8.1f} "
            + (f"{row['tokens_per_s']:>9.0f} " if generation else "")
            + f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['errors']:>6} "
            f"{row['mean_batch']:>6.1f}"
        )
    print(f"batching speed-up: {rows[0]['rps'] / rows[1]['rps']:.2f}x requests/s")
    if generation:
        print(f"batching speed-up: {rows[0]['tokens_per_s'] / rows[1]['tokens_per_s']:.2f}x "
              "generated tokens/s")
    print(f"metered: {usage['requests']} requests (warm-ups included), {usage['errors']} errors")


if __name__ == "__main__":
    main()
