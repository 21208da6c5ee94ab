"""lmforge's GPT: it is GPT-2 (same logits as transformers' GPT2LMHeadModel on the same weights),
its KV cache changes nothing, padding changes nothing, and it can learn."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.decoding import (
    DecodeBatch,
    Sampling,
    SlotBatch,
    decode_tokens,
    next_tokens,
)
from lmforge.models import GPT, GPTConfig
from lmforge.models.transformer import gpt_from_gpt2_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0, vocab=64, context=32, dropout=0.0, spread=1.0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, max_length=context, d_model=32, n_layers=2,
                          n_heads=4, d_ff=64, dropout=dropout))
    with torch.no_grad():  # wide logits: greedy choices are far from ties
        model.tok_emb.weight.mul_(spread)
    return model.eval()


def test_logits_equal_gpt2lmheadmodel_given_the_same_weights():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=97, n_positions=24, n_embd=48, n_layer=3,
                                     n_head=4, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # GPT-2 starts its LayerNorms at 1 and 0; make them count
        for name, param in hf.named_parameters():
            if "ln" in name:
                param.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    ours = gpt_from_gpt2_state_dict(
        hf.state_dict(),
        GPTConfig(vocab_size=97, max_length=24, d_model=48, n_layers=3, n_heads=4, d_ff=192),
    ).eval()
    ids = torch.randint(0, 97, (3, 24))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.shape == expected.shape == (3, 24, 97)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def greedy(model, prompts, n, use_cache):
    steps = decode_tokens(model, prompts, n, model.config.max_length, Sampling(temperature=0),
                          torch.Generator().manual_seed(0), use_cache=use_cache)
    return torch.stack(list(steps), dim=1).tolist()


def test_greedy_decoding_with_the_kv_cache_equals_decoding_without_it():
    model = tiny(spread=20.0)
    prompts = [[5, 9, 2, 7, 1], [3], [8, 8, 8]]  # different lengths: left padding
    with_cache = greedy(model, prompts, 20, use_cache=True)
    without = greedy(model, prompts, 20, use_cache=False)
    assert with_cache == without
    assert len({tuple(row) for row in with_cache}) > 1  # not a degenerate constant output


def test_a_prompt_decodes_the_same_alone_and_in_a_padded_batch():
    model = tiny(spread=20.0)
    alone = greedy(model, [[3]], 12, use_cache=True)[0]
    batched = greedy(model, [[5, 9, 2, 7, 1], [3]], 12, use_cache=True)[1]
    assert alone == batched


def alone(model, prompts, n, sampling, seed=0):
    steps = decode_tokens(model, prompts, n, model.config.max_length, sampling,
                          torch.Generator().manual_seed(seed))
    return torch.stack(list(steps), dim=1).tolist()


BATCHES = {  # how the rows are laid out, and whether the static step (a CUDA graph on a GPU;
    # here the same fixed-shape computation on the CPU) decodes them
    "padded": lambda model: DecodeBatch(model, model.config.max_length, static_after=None),
    "padded, static at once": lambda model: DecodeBatch(
        model, model.config.max_length, static_after=0),
    "padded, static after 2 steps": lambda model: DecodeBatch(
        model, model.config.max_length, static_after=2),
    "slots": lambda model: SlotBatch(model, model.config.max_length, slots=9),
}


@pytest.mark.parametrize("layout", list(BATCHES))
def test_generations_joining_and_leaving_a_batch_decode_as_they_would_alone(
    layout, monkeypatch
):
    """Continuous batching: generations of different lengths, prompts and sampling join at
    different steps, one leaves early (a stop string, say); each gets the tokens it would get
    decoded alone, and they were decoded together, in every layout."""
    monkeypatch.setattr(DecodeBatch, "STATIC_MIN_STEPS", 1)
    model = tiny(spread=20.0)
    plans = {  # key: (join at step, prompts, max new tokens, sampling, seed, leave after)
        "long": (0, [[5, 9, 2, 7, 1]], 14, Sampling(temperature=0), 0, None),
        "pair": (2, [[3], [8, 8, 8, 8, 8, 8]], 6, Sampling(temperature=0), 0, None),
        "sampled": (3, [[1, 2]], 9, Sampling(temperature=1.0, top_k=8), 7, None),
        # sampling alike: scored with "sampled", drawn with its own generator
        "alike": (4, [[2, 7], [9]], 8, Sampling(temperature=1.0, top_k=8), 3, None),
        "penalised": (3, [[4, 4, 6]], 9, Sampling(temperature=0, repetition_penalty=3.0), 0,
                      None),
        # wider than the batch when it joins: the others' rows get more padding
        "left": (3, [list(range(11, 23))], 10, Sampling(temperature=0), 0, 3),
    }
    batch = BATCHES[layout](model)
    got = {key: [[] for _ in plan[1]] for key, plan in plans.items()}
    most_rows, static_steps = 0, 0
    for step in range(30):
        for key, (at, prompts, n, sampling, seed, _) in plans.items():
            if at == step:
                batch.add(key, prompts, n, sampling, torch.Generator().manual_seed(seed))
        if not batch.groups and not batch.waiting:
            break
        done = []
        for key, tokens, last in batch.sample():
            for row, token in zip(got[key], tokens.tolist(), strict=True):
                row.append(token)
            leave_after = plans[key][5]
            if last or len(got[key][0]) == leave_after:
                done.append(key)
        most_rows = max(most_rows, batch.rows)
        batch.leave(done)
        batch.advance()
        static_steps += batch.static is not None
    assert most_rows == 8  # every group's rows at once
    assert (static_steps > 0) == (layout != "padded")
    for key, (_, prompts, n, sampling, seed, leave_after) in plans.items():
        expected = alone(model, prompts, n, sampling, seed)
        if leave_after:
            expected = [row[:leave_after] for row in expected]
        assert got[key] == expected, key
    assert batch.rows == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_decoding_gives_the_eager_tokens():
    model = tiny(spread=20.0).cuda()
    prompts = [[5, 9, 2, 7, 1], [3], [8, 8, 8]]

    def run(static_after):
        batch = DecodeBatch(model, model.config.max_length, static_after=static_after)
        batch.add("g", prompts, 20, Sampling(temperature=0), torch.Generator("cuda"))
        steps, graphed = [], False
        while batch.groups or batch.waiting:
            ((_, token, _),) = batch.sample()
            steps.append(token.tolist())
            batch.advance()
            graphed |= batch.static is not None and batch.static.graph is not None
        return steps, graphed

    eager, _ = run(None)
    graphed, used_graph = run(0)
    assert used_graph
    assert graphed == eager
    slots = SlotBatch(model, model.config.max_length, slots=4)
    slots.add("g", prompts, 20, Sampling(temperature=0), torch.Generator("cuda"))
    in_slots = []
    while slots.groups or slots.waiting:
        ((_, token, _),) = slots.sample()
        in_slots.append(token.tolist())
        slots.advance()
    assert slots.static.graph is not None
    assert in_slots == eager


def test_a_batch_trims_padding_when_the_longest_row_leaves():
    model = tiny(spread=20.0, context=16)
    batch = DecodeBatch(model, 16)
    batch.add("short", [[3]], 15, Sampling(temperature=0), torch.Generator())
    batch.add("long", [[1] * 12], 4, Sampling(temperature=0), torch.Generator())
    tokens = []
    while batch.groups or batch.waiting:
        for key, token, _ in batch.sample():
            if key == "short":
                tokens.append(token.item())
        batch.advance()  # "long" leaves after its 4 tokens; "short" would overflow unpadded
    assert tokens == alone(model, [[3]], 15, Sampling(temperature=0))[0]
    assert len(tokens) == 15


def test_decoding_stops_at_the_context():
    model = tiny(context=16)
    assert len(greedy(model, [[1, 2, 3, 4, 5, 6]], 100, use_cache=True)[0]) == 10


def test_a_tiny_gpt_overfits_a_tiny_corpus():
    model = tiny(vocab=20, context=16).train()
    torch.manual_seed(0)
    corpus = torch.randint(1, 20, (4, 17))  # four fixed random sequences
    corpus[:, 0] = torch.arange(4)  # each told apart by its first token
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        logits = model(corpus[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), corpus[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    model.eval()
    prompts = [row[:1].tolist() for row in corpus]
    # the context (16) leaves room for 15 new tokens after the one-token prompt
    assert greedy(model, prompts, 16, use_cache=True) == corpus[:, 1:16].tolist()


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 64, (2, 12))

    def grads(checkpointing):
        model = tiny().train()
        model.gradient_checkpointing = checkpointing
        F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()).backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True), strict=True):
        torch.testing.assert_close(a, b)


def test_sampling_filters():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    seen = torch.zeros_like(logits, dtype=torch.bool)
    rng = torch.Generator().manual_seed(0)

    def draws(sampling, n=300, seen=seen):
        return {int(next_tokens(logits, seen, sampling, rng)) for _ in range(n)}

    assert draws(Sampling(temperature=0)) == {0}
    assert draws(Sampling(temperature=1.0, top_k=2)) == {0, 1}
    # top_p 0.7: token 0 holds 0.64 of the mass, so token 1 is needed to reach 0.7
    assert draws(Sampling(temperature=1.0, top_p=0.7)) == {0, 1}
    assert draws(Sampling(temperature=1.0, top_p=0.5)) == {0}
    penalised = torch.tensor([[True, False, False, False, False]])
    assert draws(Sampling(temperature=0, repetition_penalty=4.0), seen=penalised) == {1}


def test_a_row_whose_scores_are_unusable_still_gets_a_token_and_no_other_row_changes():
    """NaN or infinite scores (a model or a temperature that overflowed) give that row its
    likeliest token; never a token past the vocabulary, which would fail the whole batch."""
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[3.0, 2.0, 1.0], [nan, nan, nan], [0.0, inf, 1.0], [-inf, -inf, -inf]])
    for sampling in (Sampling(temperature=0), Sampling(temperature=1.0),
                     Sampling(temperature=1e-40), Sampling(temperature=0.5, top_p=0.5)):
        tokens = next_tokens(logits, None, sampling, torch.Generator().manual_seed(0)).tolist()
        assert all(0 <= token < 3 for token in tokens), (sampling, tokens)
        assert tokens[2] == 1, sampling  # the infinite score is the likeliest
    tiny_temperature = next_tokens(logits[:1], None, Sampling(temperature=1e-40),
                                   torch.Generator().manual_seed(0))
    assert tiny_temperature.tolist() == [0]  # a temperature near 0 is greedy


def test_a_generation_whose_scores_overflow_decodes_greedily_beside_the_others():
    model = tiny(spread=20.0)
    batch = DecodeBatch(model, model.config.max_length)
    batch.add("tiny", [[5, 9, 2]], 8, Sampling(temperature=1e-40), torch.Generator())
    batch.add("sampled", [[1, 2]], 8, Sampling(temperature=1.0), torch.Generator().manual_seed(3))
    got = {"tiny": [], "sampled": []}
    while batch.groups or batch.waiting:
        for key, token, _ in batch.sample():
            got[key].append(token.item())
        batch.advance()
    assert got["tiny"] == greedy(model, [[5, 9, 2]], 8, use_cache=True)[0]
    assert got["sampled"] == alone(model, [[1, 2]], 8, Sampling(temperature=1.0), seed=3)[0]


@pytest.mark.parametrize("use_cache", [True, False])
def test_with_a_generator_per_row_a_prompt_draws_the_same_tokens_in_any_batch(use_cache):
    """Each row seeded alike: a prompt's sampled tokens do not depend on the prompts beside it,
    nor on its place among them (left padding changes no scores)."""
    model = tiny(spread=2.0)
    sampling = Sampling(temperature=1.0)
    prompts = [[5, 9, 2, 7, 1], [3], [8, 8, 8], [1, 2], [4], [6, 6], [7, 1, 3, 3], [2]]

    def decode(rows):
        rngs = [torch.Generator().manual_seed(1) for _ in rows]
        steps = decode_tokens(model, rows, 10, model.config.max_length, sampling, rngs,
                              use_cache=use_cache)
        return torch.stack(list(steps), dim=1).tolist()

    each_alone = [decode([prompt])[0] for prompt in prompts]
    assert len({tuple(row) for row in each_alone}) > 1
    assert decode(prompts) == each_alone
    assert decode(prompts[::-1]) == each_alone[::-1]
