"""(worker `build`) Random-weight models with the shipped configs' real shapes (tiny ones with --dry), saved as
safetensors, each with the kit's SmolLM2 tokenizer padded to the model's vocabulary; and the stored run's judge
prompt lengths in tokens."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from .common import EMBEDDED, REPO, GiB

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def kit_tokenizer(kit: Path) -> Path:
    """The kit's SmolLM2 tokenizer files, else those of the embedded model's converted folder in the cache (made
    from its GGUF on first use: needs the `gguf` package, as after `make setup`)."""
    if (kit / "tokenizer" / "tokenizer.json").is_file():
        return kit / "tokenizer"
    from pipeline.models import cache_root, model_folder

    real_cache = os.environ.get("GPU_CHECK_MODEL_CACHE")  # the user's cache, not the check's scratch cache
    return Path(model_folder(EMBEDDED, Path(real_cache) if real_cache else cache_root(None)))


def write_tokenizer(src: Path, dest: Path, vocab_size: int) -> dict:
    """The tokenizer files in `dest`, the vocabulary padded with unused entries up to `vocab_size` ids.

    A random model picks any of its ids; padded, every id it can produce decodes (to '<|pad_vocab_N|>', which no
    text encodes to: the byte-level pre-tokenizer splits it at its punctuation), so the stages' decoding, token
    lists and verdict parsing run as with a real tokenizer of that size."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    data = json.loads((src / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    have = max([*vocab.values(), *(t["id"] for t in data.get("added_tokens", []))]) + 1
    for i in range(have, vocab_size):
        vocab[f"<|pad_vocab_{i}|>"] = i
    (dest / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    return {"source": str(src), "own_ids": have, "padded_to": max(have, vocab_size)}


def shrink(cfg) -> None:
    """Tiny shapes for --dry: hidden 64, 2 layers, 4 heads of 16 (2 key/value heads), MLP 128."""
    cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 64, 128, 2
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16


def w_build(params: dict) -> dict:
    """Each model in turn (one failing, out of memory or disk say, does not stop the next); the result file is
    rewritten after each, so what was built is known even if the step runs out of time. The judge prompts' lengths
    are measured with the first model's tokenizer (every model gets the same one)."""
    import torch
    from transformers import AutoTokenizer

    dry = params["dry"]
    kit, dest = Path(params["kit"]), Path(params["dest"])
    tok_src = kit_tokenizer(kit)
    tok = AutoTokenizer.from_pretrained(tok_src)
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
               "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id}
    out = {"models": {}, "failed": {}, "tokenizer": {"source": str(tok_src), "ids": len(tok), **special}}
    for spec in params["models"]:
        try:
            out["models"][spec["name"]] = build_one(spec, dry, kit, dest, tok_src, len(tok), special)
        except Exception as e:  # recorded; the other models are still built
            out["failed"][spec["name"]] = f"{type(e).__name__}: {str(e)[:500]}"
            if not dry:
                torch.cuda.empty_cache()
        lengths = params.get("lengths")
        if lengths and out["models"] and "lengths" not in out and "lengths_error" not in out:
            try:
                folder = next(iter(out["models"].values()))["folder"]
                out["lengths"] = prompt_lengths(lengths["runs_dir"], lengths["run_id"], folder, lengths["judge_prompt"])
            except Exception as e:  # recorded: the judges need these lengths
                out["lengths_error"] = f"{type(e).__name__}: {e}"
        Path(params["result"]).write_text(json.dumps(out, default=str))
    return out


def model_config(spec: dict, dry: bool, kit: Path, own: int, special: dict):
    """The shipped config (the kit's copy first), cut to `layers`, tiny with --dry, with the tokenizer's ids."""
    from pipeline.placement.configs import config_from_file

    shipped = kit / "model_configs" / spec["config"]
    if not shipped.is_file():
        shipped = REPO / "src" / "pipeline" / "model_configs" / spec["config"]
    cfg = config_from_file(shipped)
    if spec.get("layers"):
        cfg.num_hidden_layers = spec["layers"]
    if dry:
        shrink(cfg)
        cfg.vocab_size = own + 64  # a few ids beyond the tokenizer's own, as the real models have
    for key, value in special.items():
        setattr(cfg, key, value)
    return cfg


def build_one(spec: dict, dry: bool, kit: Path, dest: Path, tok_src: Path, own: int, special: dict) -> dict:
    """One random-weight model from a shipped config, saved as safetensors with the padded tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.perf_counter()
    folder = dest / spec["name"]
    done = folder / ".built.json"
    if done.is_file():  # a rerun on the same machine reuses what an earlier check built
        return {**json.loads(done.read_text()), "reused": True}
    shutil.rmtree(folder, ignore_errors=True)
    cfg = model_config(spec, dry, kit, own, special)
    dest.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if dry else torch.bfloat16
    need = estimated_bytes(cfg) * dtype.itemsize
    free = shutil.disk_usage(dest).free
    if need * 1.05 > free:
        raise RuntimeError(f"needs {need / GiB:.1f} GiB on disk, {free / GiB:.1f} GiB free in {dest}")
    torch.manual_seed(0)
    with torch.device("cpu" if dry else "cuda"):  # the 8B is 16 GB: made on the GPU, not in RAM
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.generation_config = GenerationConfig(**special)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    del model
    if not dry:
        torch.cuda.empty_cache()
    tok_info = write_tokenizer(tok_src, folder, cfg.vocab_size)
    check = AutoTokenizer.from_pretrained(folder)
    if len(check) < cfg.vocab_size:
        raise RuntimeError(f"{folder}: the padded tokenizer has {len(check)} ids, not {cfg.vocab_size}")
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    info = {"folder": str(folder), "config": spec["config"], "layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size, "params": n_params, "bytes": size,
            "dtype": str(dtype).removeprefix("torch."), "seconds": round(time.perf_counter() - t0, 2),
            "tokenizer": tok_info, "special_ids": special}
    done.write_text(json.dumps(info))
    return info


def estimated_bytes(cfg) -> int:
    """Parameters of a Llama-style config, from its shapes (to check the disk before building)."""
    h, i, v, n = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    head = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    attn = h * head * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)
    return v * h * (1 if cfg.tie_word_embeddings else 2) + n * (attn + 3 * h * i + 2 * h) + h


def compose(overrides: list[str]):
    from pipeline.bench import compose_config

    return compose_config(overrides)


def prompt_lengths(runs_dir: str, run_id: str, folder: str, judge_prompt: str) -> dict:
    """The judge prompts' lengths in tokens over the stored run, built as the judge stage builds them."""
    from pipeline.judge import generations_of
    from pipeline.models import load_tokenizer, use_chat_template
    from pipeline.verdict import PromptBuilder

    cfg = compose([f"judge_prompt={judge_prompt}", "judge=llama8b", f"judge.model={folder}"])
    answers = generations_of(Path(runs_dir) / run_id)
    tok = load_tokenizer(folder, cfg.judge)
    build = PromptBuilder(tok, cfg.judge_prompt, use_chat_template(tok, cfg.judge.use_chat_template))
    lengths = sorted(len(build(a)[1]) for a in answers)
    return {"longest_prompt": lengths[-1], "median_prompt": lengths[len(lengths) // 2], "shortest_prompt": lengths[0]}
