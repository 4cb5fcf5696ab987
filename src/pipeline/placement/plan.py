"""The plan as a value: where every module goes, what each device holds, and for which model and precision.

`Plan` is what planning returns and what the loader applies (`models.load_planned`) and checks
(`placement.verify_loaded`): the model's identity (`ModelIdentity`: spec, revision, trust_remote_code, and the
resolved `source` folder, set with `with_source` once known), its `Precision`, the device map, and one
`DeviceRow` per device with weights, named reserves and margin. `to_dict` is plan.json; `table` is what the
stages print. Helpers to name devices and find a module's device in a map live here too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

from ..hardware import GiB
from ..models import Precision

RESERVES = ("quant_state", "kv_cache", "activations", "logits", "qmm_workspace", "cuda_context")
RESERVE_LABELS = {"quant_state": "qstate", "kv_cache": "KV", "activations": "act", "logits": "logits",
                  "qmm_workspace": "qmm", "cuda_context": "ctx"}
# The most GPUs of one kind a recommendation counts up to (recommend.py); more is shown as ">N".
MAX_GPUS_CONSIDERED = 16


@dataclass
class DeviceRow:
    device: str  # "cuda:0", "cpu", "disk", "mps"
    label: str  # GPU name, "RAM", ...
    modules: list[str]
    params: int
    weight_bytes: int
    reserves: dict[str, int]
    margin_bytes: int
    budget_bytes: int | None  # the max_memory entry infer_auto_device_map worked with
    capacity_bytes: int | None

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + sum(self.reserves.values()) + self.margin_bytes

    @property
    def summary(self) -> str:
        return summarize_modules(self.modules)


@dataclass(frozen=True)
class ModelIdentity:
    """Which model a plan was made for, as the loader needs it."""

    name: str  # the preset's name, for messages
    spec: str  # the config's model spec: Hub id, folder or gguf: spec
    revision: str | None = None
    trust_remote_code: bool = False
    source: str | None = None  # the folder (or Hub id) from_pretrained reads; None until resolved

    @classmethod
    def of(cls, model_cfg, source: str | None = None) -> "ModelIdentity":
        return cls(model_cfg.name, model_cfg.model, model_cfg.revision, bool(model_cfg.trust_remote_code),
                   None if source is None else str(source))


@dataclass
class Plan:
    model: str  # label: "name (spec)"
    precision: Precision
    strategy: str
    hardware: dict
    workload: dict
    device_map: dict[str, int | str]
    rows: list[DeviceRow]
    total_params: int
    total_weight_bytes: int
    fits: bool
    problems: list[str] = field(default_factory=list)
    offloaded: bool = False
    reserves_counted: bool = True
    recommendations: list[dict] = field(default_factory=list)
    identity: ModelIdentity | None = None  # None for what-if plans (recommendations), which are never loaded

    @property
    def precision_label(self) -> str:
        return self.precision.describe()

    @property
    def source(self) -> str | None:
        return self.identity.source if self.identity else None

    def with_source(self, source) -> "Plan":
        """A copy of this plan that loads from `source` (the resolved folder), the plan itself unchanged."""
        if self.identity is None:
            raise ValueError("a plan without a model identity (a what-if plan) cannot be given a source")
        return replace(self, identity=replace(self.identity, source=str(source)))

    def to_dict(self) -> dict:
        """plan.json: the fields above, `precision` as its description plus `precision_settings` as a dict."""
        d = asdict(replace(self, precision=None))
        d["precision"] = self.precision_label
        d["precision_settings"] = self.precision.to_dict()
        for row, src in zip(d["rows"], self.rows):
            row["summary"] = src.summary
            row["total_bytes"] = src.total_bytes
        return d

    def table(self) -> str:
        shown = [r for r in RESERVES if any(row.reserves.get(r) for row in self.rows)]
        head = ["device", "params", "weights", *[RESERVE_LABELS[r] for r in shown], "margin", "total / capacity",
                "modules"]
        lines = [head]
        for r in self.rows:
            cap = f" / {r.capacity_bytes / GiB:.2f}" if r.capacity_bytes else ""
            lines.append([f"{r.device} {r.label}".strip(), f"{r.params / 1e9:.3f} B", gib(r.weight_bytes),
                          *[gib(r.reserves.get(x, 0)) for x in shown], gib(r.margin_bytes),
                          f"{r.total_bytes / GiB:.2f}{cap} GiB", r.summary])
        lines.append(["total", f"{self.total_params / 1e9:.3f} B", gib(self.total_weight_bytes),
                      *[gib(sum(row.reserves.get(x, 0) for row in self.rows)) for x in shown],
                      gib(sum(row.margin_bytes for row in self.rows)),
                      f"{sum(row.total_bytes for row in self.rows) / GiB:.2f} GiB", ""])
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        w = self.workload
        out = [f"placement plan: {self.model}, {self.precision_label}, strategy {self.strategy}, on "
               f"{self.hardware['name']}; batch {w['batch_size']} x {w['seq_len']} tokens"]
        for n, line in enumerate(lines):
            out.append("  ".join(c.ljust(wd) if i in (0, len(head) - 1) else c.rjust(wd)
                                 for i, (c, wd) in enumerate(zip(line, widths))).rstrip())
            if n in (0, len(lines) - 2):
                out.append("  ".join("-" * wd for wd in widths))
        if shown:
            out.append("reserves (GiB): " + ", ".join(f"{RESERVE_LABELS[x]} = {x.replace('_', ' ')}" for x in shown))
        elif not self.reserves_counted:
            out.append("weights only (placement.reserves=false): the stock transformers plan")
        out.append("verdict: " + ("fits" + (" (WITH OFFLOAD: slow)" if self.offloaded else "") if self.fits
                                  else "DOES NOT FIT. " + " ".join(self.problems)))
        if self.recommendations:
            out.append(recommendation_text(self.recommendations))
        return "\n".join(out)


def recommendation_text(recs: list[dict]) -> str:
    lines = ["what fits (precision: here? / fewest GPUs of each kind):"]
    for r in recs:
        kinds = ", ".join(f"{n if n else f'>{MAX_GPUS_CONSIDERED}'} x {k}" for k, n in r["fewest_gpus"].items())
        lines.append(f"  {r['precision']:5} {'fits here' if r['fits_here'] else 'no':9}  {kinds}")
    best = next((r["precision"] for r in recs if r["fits_here"]), None)
    if best:
        lines.append(f"  the most faithful precision that fits here: {best}")
    return "\n".join(lines)


def gib(n: int | None) -> str:
    return "" if n is None else f"{n / GiB:.2f}"


def summarize_modules(names: list[str]) -> str:
    """'model.embed_tokens, model.layers.0-39' from a list of module names."""
    if names == [""]:
        return "whole model"
    layers: dict[str, list[int]] = defaultdict(list)
    others = []
    for name in names:
        head, _, tail = name.rpartition(".")
        if tail.isdigit() and head.rpartition(".")[2] in ("layers", "h", "blocks", "layer"):
            layers[head].append(int(tail))
        else:
            others.append(name)
    parts = list(others)
    for prefix, idx in layers.items():
        idx.sort()
        ranges, start = [], idx[0]
        for a, b in zip(idx, idx[1:] + [None]):
            if b != a + 1:
                ranges.append(f"{start}" if start == a else f"{start}-{a}")
                start = b
        parts.append(f"{prefix}.{','.join(ranges)}")
    return ", ".join(parts)


def device_name(value: int | str) -> str:
    return f"cuda:{value}" if isinstance(value, int) else str(value)


def owner(device_map: dict, name: str) -> int | str:
    """The device of a parameter or module: the entry for it or for its nearest ancestor."""
    best = None
    for module in device_map:
        if module == "" or name == module or name.startswith(module + "."):
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise KeyError(name)
    return device_map[best]
