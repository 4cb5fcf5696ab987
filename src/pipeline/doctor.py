"""stage=doctor: what to run on a new node before a long job.

    python -m pipeline stage=doctor                                  # this node, every judge preset
    python -m pipeline stage=doctor judge=llama70b-8bit doctor.smoke=true

Prints the GPUs torch sees (name, memory, free), CUDA_VISIBLE_DEVICES and the SLURM allocation, whether
bitsandbytes int8 and NF4 layers really run here, and for every judge preset whether it fits this node in each
precision (planned with all reserves). With doctor.smoke=true it also loads the generator and answers one question.
Exits with status 2 when the chosen judge (judge=...) cannot run here.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import torch
from omegaconf import OmegaConf

from .config import JudgeConfig, conf_dir
from .errors import PipelineError
from .hardware import GiB, Hardware, detect
from .placement import PRECISION_LADDER, plan_for, replace_precision

log = logging.getLogger(__name__)


def bitsandbytes_status(device: str) -> list[tuple[str, bool, str]]:
    """Run one int8 and one NF4 layer on `device`; (scheme, works, detail) for each."""
    try:
        import bitsandbytes as bnb
    except Exception as e:  # broken installs raise all sorts of errors at import
        return [("int8", False, f"cannot import bitsandbytes: {e}"), ("nf4", False, "cannot import bitsandbytes")]
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    reference = torch.nn.Linear(64, 64, bias=False)
    x = torch.randn(4, 64)
    expected = reference(x)
    layers = {"int8": lambda: bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False),
              "nf4": lambda: bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compute_dtype=dtype)}
    out = []
    for scheme, make in layers.items():
        try:
            layer = make()
            layer.load_state_dict(reference.state_dict())
            layer = layer.to(device)
            with torch.no_grad():
                got = layer(x.to(device=device, dtype=dtype)).float().cpu()
            error = (got - expected).abs().max().item() / expected.abs().max().item()
            ok = error < 0.25
            out.append((scheme, ok, f"bitsandbytes {bnb.__version__} on {device}: relative error {error:.3f}"))
        except Exception as e:  # what fails here is exactly what the user needs to see
            out.append((scheme, False, f"bitsandbytes {bnb.__version__} on {device}: {type(e).__name__}: {e}"))
    return out


@contextmanager
def quiet(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def judge_presets() -> dict[str, object]:
    presets = {}
    for path in sorted((conf_dir() / "judge").glob("*.yaml")):
        presets[path.stem] = OmegaConf.merge(OmegaConf.structured(JudgeConfig), OmegaConf.load(path))
    return presets


def fit_matrix(hardware: Hardware) -> list[tuple[str, str, list[str]]]:
    """(preset, its own precision, ['fits' | reason per precision of the ladder]) for every judge preset."""
    rows = []
    with quiet("pipeline.models"):  # bf16 on CPU warns that it is slow; here it is only planned
        for name, preset in judge_presets().items():
            cells = []
            for precision in PRECISION_LADDER:
                plan = plan_for(replace_precision(preset, precision), hardware)
                cells.append("fits" + (" (offload)" if plan.offloaded else "") if plan.fits else
                             "needs GPUs" if not plan.rows else "too big")
            rows.append((name, preset.precision, cells))
    return rows


def describe_node(hardware: Hardware) -> list[str]:
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else (
        f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else "CPU-only")
    lines = [f"torch {torch.__version__} ({build} build); {torch.get_num_threads()} CPU threads; "
             f"{hardware.cpu_bytes / GiB:.1f} GiB RAM available"]
    if hardware.gpus:
        lines.append(f"{len(hardware.gpus)} GPU(s) ({hardware.backend}):")
        for g in hardware.gpus:
            free = f", {g.free_bytes / GiB:.1f} GiB free" if g.free_bytes is not None else ""
            lines.append(f"  {g.index}: {g.name}, {g.total_bytes / GiB:.1f} GiB{free}")
    else:
        lines.append("GPUs: none")
    lines += [f"note: {n}" for n in hardware.notes]
    return lines


def smoke_test(cfg) -> str:
    """Load the generator and answer one question; the answer and the time it took."""
    from .decoding import StopRule, generated_text, greedy_batch
    from .generate import Generator, generator_messages
    from .models import encode_chat, load_planned, load_tokenizer, use_chat_template
    from .placement import verify_loaded

    g = cfg.generator
    started = time.perf_counter()
    plan = Generator.prepare(cfg).plan
    device = plan.device_map[""]
    tok = load_tokenizer(plan.source, g)
    model = load_planned(plan)
    verify_loaded(model, plan)
    question = "What is the capital of France?"
    _, ids = encode_chat(tok, generator_messages(cfg, question), use_chat_template(tok, g.use_chat_template))
    [gen] = greedy_batch(model, [ids], g.max_new_tokens, StopRule.build(tok, model, g.stop_at_newline))
    answer = generated_text(tok, gen, g.stop_at_newline)
    return f"{g.name} on {device}: {question!r} -> {answer!r} ({time.perf_counter() - started:.1f} s with loading)"


def run(cfg) -> bool:
    hardware = detect()
    print("== this node")
    for line in describe_node(hardware):
        print(line)

    print("\n== bitsandbytes")
    device = "cuda:0" if hardware.gpus and hardware.backend in ("cuda", "rocm") else "cpu"
    for scheme, ok, detail in bitsandbytes_status(device):
        print(f"{scheme:5} {'usable' if ok else 'NOT USABLE'}: {detail}")

    print("\n== judge presets on this node (batch x max_seq_len of each preset; * = the preset's precision)")
    matrix = fit_matrix(hardware)
    width = max(len(name) for name, _, _ in matrix)
    print(f"{'judge':{width}}  " + "  ".join(f"{p:12}" for p in PRECISION_LADDER))
    for name, own, cells in matrix:
        print(f"{name:{width}}  " + "  ".join(f"{(c + ('*' if p == own else '')):12}"
                                              for p, c in zip(PRECISION_LADDER, cells)))

    if cfg.doctor.smoke:
        print("\n== smoke test")
        print(smoke_test(cfg))

    plan = plan_for(cfg.judge, hardware)
    print(f"\n== chosen judge: {cfg.judge.name} ({plan.precision_label})")
    if not plan.fits:
        raise PipelineError(f"judge {cfg.judge.name!r} cannot run on this node: {' '.join(plan.problems)} "
                            f"See `python -m pipeline stage=plan judge={cfg.judge.name}` for what would fit.")
    print(f"fits: {', '.join(f'{r.device} {r.total_bytes / GiB:.2f} GiB' for r in plan.rows)}")
    return True
