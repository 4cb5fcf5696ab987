"""stage=fetch: every model a chain needs, into the shared cache, once, from a machine that can reach the Hub (a
cluster's login node), so that the jobs never download: compute nodes are often offline, and four array tasks would
each fetch the 140 GB of a 70B judge.

    python -m pipeline stage=fetch generator=llama31-8b judge=llama70b-8bit     # then stage=submit with the same

For each model (the generator's and the judge's, or fetch.models): a Hub id is downloaded with huggingface_hub into
its cache (HF_HOME; the weights, config, tokenizer and generation config, at generator/judge.revision), a GGUF file
is converted once into cache_dir, a local folder is checked. Each is then verified (config.json; every safetensors
file its index lists; no weights at all is refused) and reported with its size and location. A model served
elsewhere in completions style (engine=openai) is fetched as its tokenizer and config only (the prompts are its
token ids; the weights are the server's); in chat style it is not fetched at all. stage=submit checks the
same (`missing`, offline, nothing downloaded) and refuses with this command when a model is not there; the jobs run
with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from .engines.settings import chat_style
from .errors import PipelineError, plural

log = logging.getLogger(__name__)

# What a model's folder needs: weights and how to build the model and its tokenizer; not other formats' copies.
WANTED = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]
# What a model served elsewhere in completions style needs here: its tokenizer and config (the prompts are its token
# ids), never its weights (140 GB for a 70B that runs on another machine).
TOKENIZER = [p for p in WANTED if p != "*.safetensors"]


@dataclass
class Fetched:
    spec: str
    folder: Path
    files: int
    bytes: int
    how: str  # "downloaded", "in the cache", "converted from GGUF", "local folder"

    def line(self) -> str:
        return (f"{self.spec}: {self.how}, {self.files} files, {self.bytes / 2 ** 30:.2f} GiB in {self.folder}")


def wanted_models(cfg) -> list[tuple[str, str | None, str, bool]]:
    """(spec, revision, who, weights) of each model the chain reads here: the generator and the judge; of a model
    served elsewhere (engine=openai) only its tokenizer (weights false), and nothing in chat style (the server
    applies its own template); fetch.models instead when given."""
    listed = list(cfg.fetch.models) if "fetch" in cfg and cfg.fetch.models else None
    if listed:
        return [(str(m), None, "fetch.models", True) for m in listed]
    out = []
    for who, m in (("generator", cfg.generator), ("judge", cfg.judge)):
        if not chat_style(m):
            out.append((str(m.model), getattr(m, "revision", None), who, str(m.engine) != "openai"))
    return out


def check_folder(spec: str, folder: Path, weights: bool = True) -> tuple[int, int]:
    """(files, bytes) of a model folder, refused when it cannot be loaded: no config.json, no weights, or a sharded
    checkpoint with a shard missing; without `weights`, no tokenizer."""
    if not (folder / "config.json").is_file():
        raise PipelineError(f"model {spec}: {folder} has no config.json; fetch it again (stage=fetch).")
    if not weights:
        if not any(folder.glob("tokenizer*")) and not any(folder.glob("*.model")) and \
                not any(folder.glob("*.tiktoken")):
            raise PipelineError(f"model {spec}: no tokenizer (tokenizer.json) in {folder}; fetch it again "
                                "(stage=fetch).")
        return folder_size(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise PipelineError(f"model {spec}: {plural(len(missing), 'weight file')} of {len(shards)} missing in "
                                f"{folder} ({', '.join(missing[:3])}...); fetch it again (stage=fetch).")
    elif not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise PipelineError(f"model {spec}: no weights (*.safetensors) in {folder}; fetch it again (stage=fetch).")
    return folder_size(folder)


def folder_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) under `folder`."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def locate(spec: str, revision: str | None, cache_dir: Path, download: bool, weights: bool = True,
           cached: bool = True) -> tuple[Path, str] | None:
    """Where the model is (and how it got there), downloading or converting it when `download`; None when it is
    not here and `download` is false. Without `weights` a Hub model is its tokenizer and config only."""
    from .models import COMPLETE_MARKER, locate_gguf, materialize_gguf

    if spec.startswith("gguf:"):
        _, key = locate_gguf(spec)
        folder = cache_dir / "models" / key
        if (folder / COMPLETE_MARKER).is_file():
            return folder, "in the cache (converted from GGUF)"
        return (materialize_gguf(spec, cache_dir), "converted from GGUF") if download else None
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        if not path.exists():
            raise PipelineError(f"model {spec!r}: no such folder {path.resolve()}.")
        return path, "local folder"
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = WANTED if weights else TOKENIZER
    try:
        if cached:  # `cached` false: the cache's copy is known to be short of files
            return Path(snapshot_download(spec, revision=revision, allow_patterns=patterns, local_files_only=True)), \
                "in the cache"
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if not download:
        return None
    try:
        return Path(snapshot_download(spec, revision=revision, allow_patterns=patterns)), "downloaded"
    except Exception as e:  # the Hub unreachable, a gated or unknown repo: one line with the Hub's words
        raise PipelineError(f"model {spec}: could not download it from the Hub: {str(e).splitlines()[0][:300]}. "
                            "Run stage=fetch where the Hub is reachable (a login node), log in for a gated model "
                            "(hf auth login), or give a local folder.") from None


def missing(cfg, cache_dir: Path) -> list[str]:
    """The models of the chain that are not on this machine yet (nothing downloaded): for stage=submit."""
    gone = []
    for spec, revision, who, weights in wanted_models(cfg):
        found = locate(spec, revision, cache_dir, download=False, weights=weights)
        if found is None:
            gone.append(f"{who} {spec}")
        else:
            check_folder(spec, found[0], weights)
    return gone


def run(cfg) -> list[Fetched]:
    from .models import cache_root

    cache_dir = cache_root(cfg.cache_dir)
    done = []
    for spec, revision, who, weights in wanted_models(cfg):
        folder, how = locate(spec, revision, cache_dir, download=True, weights=weights)
        try:
            files, size = check_folder(spec, folder, weights)
        except PipelineError as short:
            if how != "in the cache":  # a local folder, or what was just downloaded: as it is
                raise
            # in the cache, but not all of it (its tokenizer only, fetched for a served model): download the rest
            try:
                folder, how = locate(spec, revision, cache_dir, download=True, weights=weights, cached=False)
            except PipelineError as e:
                raise PipelineError(f"{str(short).rstrip('.')}; downloading the rest failed: {e}") from None
            files, size = check_folder(spec, folder, weights)
        how += "" if weights else " (its tokenizer: it is served elsewhere)"
        done.append(Fetched(spec, folder, files, size, how))
        print(f"{who} {done[-1].line()}", flush=True)
    print(f"fetched {plural(len(done), 'model')}: the jobs can run offline (HF_HUB_OFFLINE=1).")
    return done
