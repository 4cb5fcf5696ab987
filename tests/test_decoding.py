"""The batched greedy decoder on the real SmolLM2, checked against transformers' own `generate`."""

import pytest
import torch

from pipeline.decoding import StopRule, generated_text, greedy_batch, input_device, shared_prefix_length
from pipeline.models import encode_chat

pytestmark = pytest.mark.slow

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


def test_length_limit_is_reported(tokenizer_and_model):
    tok, model = tokenizer_and_model
    [gen] = greedy_batch(model, prompts(tok, ["Write a long story about a dragon."]), 3,
                         StopRule.build(tok, model, stop_at_newline=True))
    assert len(gen.token_ids) == 3 and gen.finish_reason == "length"


def test_inputs_go_to_the_device_of_the_input_embeddings():
    """The seam a multi-GPU map depends on: token ids go where the first module (the embeddings) lives."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64)
    model = AutoModelForCausalLM.from_config(config)
    assert input_device(model) == torch.device("cpu")
    model.get_input_embeddings().to("meta")  # stands in for "cuda:0" while the rest stays elsewhere
    assert input_device(model) == torch.device("meta")
