"""decoding.py: the batched greedy decoder on the real SmolLM2 (slow), checked against transformers' own `generate`;
and, without the real model, the shared prefix, length batches, and inputs sent where the input embeddings live."""

from types import SimpleNamespace

import pytest
import torch

from pipeline.decoding import (PrefixCache, StopRule, generated_text, greedy_batch, input_device, length_batches,
                               next_token_logprobs, shared_prefix_length)
from pipeline.models import encode_chat

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?", "How many legs does a spider have?",
             "What is the chemical symbol for gold?", "Which planet is known as the Red Planet?",
             "What is the largest ocean on Earth?", "In which year did World War II end?",
             "What do bees make?"]
SYSTEM = "You answer trivia questions. Reply with the answer only, in a few words."


def prompts(tok, questions=QUESTIONS):
    return [encode_chat(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}], True)[1]
            for q in questions]


def test_shared_prefix_length_leaves_each_row_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[7, 8]]) == 1
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0


@pytest.mark.slow
def test_same_tokens_and_logprobs_as_transformers_generate(tokenizer_and_model):
    tok, model = tokenizer_and_model
    stop = StopRule.build(tok, model, stop_at_newline=False)
    ids = prompts(tok)
    ours = greedy_batch(model, ids, 16, stop)
    for p, gen in zip(ids, ours):  # reference: one prompt at a time, no padding, no prefix sharing
        with torch.inference_mode():
            out = model.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id)
        ref = out.sequences[0, len(p):].tolist()
        assert gen.token_ids == ref
        ref_lp = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, ref)]
        assert gen.token_logprobs == pytest.approx(ref_lp, abs=2e-3)
        assert gen.finish_reason == ("eos" if ref[-1] == tok.eos_token_id else "length")


@pytest.mark.slow
def test_results_do_not_depend_on_batching_or_prefix_sharing(tokenizer_and_model):
    tok, model = tokenizer_and_model
    stop = StopRule.build(tok, model, stop_at_newline=True)
    ids = prompts(tok)
    batched = greedy_batch(model, ids, 20, stop)
    alone = [greedy_batch(model, [p], 20, stop, share_prefix=False)[0] for p in ids]
    assert [g.token_ids for g in batched] == [g.token_ids for g in alone]
    assert [g.finish_reason for g in batched] == [g.finish_reason for g in alone]
    # rows finish at different steps: the batch really shrank while others went on
    assert len({len(g.token_ids) for g in batched}) > 1


@pytest.mark.slow
def test_a_stage_prefix_is_run_once_and_changes_no_result(tokenizer_and_model):
    """Batches reuse the stage-wide prefix's KV cache (the system turn) instead of running it again, and decode
    exactly as without it, whether a batch's own shared prefix is longer than the stage's or equal to it."""
    tok, model = tokenizer_and_model
    stop = StopRule.build(tok, model, stop_at_newline=True)
    ids = prompts(tok, QUESTIONS + ["What is the capital of Italy?", "What is the capital of Spain?"])
    shared = PrefixCache(ids)
    assert shared.ids == ids[0][:shared_prefix_length(ids)] and len(shared.ids) > 10
    batches = [ids[-2:], ids[:3], ids[3:8]]  # the first batch shares more than the system turn ("What is the capital")
    assert shared_prefix_length(batches[0]) > len(shared.ids)
    reused = [g for b in batches for g in greedy_batch(model, b, 12, stop, stage_prefix=shared)]
    assert shared.runs == 1  # computed for the first batch, copied into the other two
    plain = [g for b in batches for g in greedy_batch(model, b, 12, stop)]
    assert [g.token_ids for g in reused] == [g.token_ids for g in plain]
    assert [g.finish_reason for g in reused] == [g.finish_reason for g in plain]
    for a, b in zip(reused, plain):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
    yes_no = [tok.encode(" yes", add_special_tokens=False)[0], tok.encode(" no", add_special_tokens=False)[0]]
    lp_reused, top_reused = next_token_logprobs(model, ids[:5], yes_no, stage_prefix=shared)
    lp_plain, top_plain = next_token_logprobs(model, ids[:5], yes_no)
    assert torch.allclose(lp_reused, lp_plain, atol=1e-4) and torch.equal(top_reused, top_plain)
    assert shared.runs == 1
    # prompts that do not start with the stage prefix leave it alone and are still right
    other = [encode_chat(tok, [{"role": "user", "content": q}], True)[1] for q in QUESTIONS[:3]]
    assert not shared.covers(other[0][:shared_prefix_length(other)])
    assert [g.token_ids for g in greedy_batch(model, other, 12, stop, stage_prefix=shared)] == \
        [g.token_ids for g in greedy_batch(model, other, 12, stop)]


@pytest.mark.slow
def test_rows_stop_at_the_end_of_their_first_line(tokenizer_and_model):
    tok, model = tokenizer_and_model
    ids = prompts(tok, ["List three fruits, one per line.", "What are the steps to make tea? Use a list.",
                        "Write a short poem about cats."])
    free = greedy_batch(model, ids, 40, StopRule.build(tok, model, stop_at_newline=False))
    stopped = greedy_batch(model, ids, 40, StopRule.build(tok, model, stop_at_newline=True))
    for f, s in zip(free, stopped):
        assert "\n" in tok.decode(f.token_ids).strip()  # left alone, the model writes several lines
        assert s.finish_reason == "newline"
        assert s.token_ids == f.token_ids[:len(s.token_ids)]  # the same text, cut at the first line's end
        text = generated_text(tok, s, first_line_only=True)
        assert text and "\n" not in text


@pytest.mark.slow
def test_length_limit_is_reported(tokenizer_and_model):
    tok, model = tokenizer_and_model
    [gen] = greedy_batch(model, prompts(tok, ["Write a long story about a dragon."]), 3,
                         StopRule.build(tok, model, stop_at_newline=True))
    assert len(gen.token_ids) == 3 and gen.finish_reason == "length"


def test_the_decoder_sends_its_inputs_where_input_device_says(monkeypatch):
    """The seam a multi-GPU map depends on: token ids go where the first module (the input embeddings) lives, and so
    do the mask and positions made for them. With input_device made to answer "meta" for a model that is wholly on
    the CPU, every forward call of the real decoding path (the shared prefix, the stage prefix, the batch, each
    decoding step) must receive its tensors on meta; a decoder that took the device from anywhere else fails."""
    import pipeline.decoding as decoding
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64)
    model = AutoModelForCausalLM.from_config(config)
    assert input_device(model) == torch.device("cpu")
    model.get_input_embeddings().to("meta")  # stands in for "cuda:0" while the rest stays elsewhere
    assert input_device(model) == torch.device("meta")

    model = AutoModelForCausalLM.from_config(config).eval()  # all on the CPU
    calls = []

    def forward(*args, **kwargs):  # records where each input tensor is; computes nothing
        assert not args, "the decoder passes its inputs by keyword"
        calls.append({k: v.device for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
        rows = kwargs["input_ids"].shape[0]
        return SimpleNamespace(logits=torch.zeros(rows, 1, config.vocab_size))

    monkeypatch.setattr(model, "forward", forward)
    monkeypatch.setattr(decoding, "input_device", lambda m: torch.device("meta"))
    stop = StopRule(torch.zeros(config.vocab_size, dtype=torch.bool), None, None, None)
    prompts = [[1, 2, 3, 4], [1, 2, 5]]  # share the prefix [1, 2]
    runs = {
        "logprobs, shared prefix": lambda: next_token_logprobs(model, prompts, [7, 8]),
        "logprobs, no sharing": lambda: next_token_logprobs(model, prompts, [7, 8], share_prefix=False),
        "logprobs, stage prefix": lambda: next_token_logprobs(model, prompts, [7, 8],
                                                              stage_prefix=PrefixCache(prompts)),
        "greedy, shared prefix": lambda: greedy_batch(model, prompts, 3, stop),
        "greedy, no sharing": lambda: greedy_batch(model, prompts, 3, stop, share_prefix=False),
    }
    for name, run in runs.items():
        calls.clear()
        try:
            run()
        except Exception:  # the fake forward fills no cache; what was sent before that is what counts
            pass
        assert calls, f"{name}: the model was never called"
        assert "input_ids" in calls[0], (name, calls[0])
        assert all(device == torch.device("meta") for call in calls for device in call.values()), (name, calls)


def test_an_outlier_runs_in_a_batch_of_its_own():
    lengths = [10_000] + [48] * 40 + [40] * 23
    batches = length_batches(lengths, 32)
    assert batches[0] == (0, 1)  # the outlier alone, not padding 31 others to 10,000 tokens
    assert [hi - lo for lo, hi in batches[1:]] == [32, 31]
    assert length_batches([40] * 64, 32) == [(0, 32), (32, 64)]  # ordinary data: the batches it always had
