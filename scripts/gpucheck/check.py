"""The check's steps, each run by Runner.step: the kit, preflight, doctor, the stored run, the models, the plans, each
judge and the generate comparison. A step raises StepFailed with what went wrong; what it measured before that stays
in the results."""

from __future__ import annotations

import json
import os
import shutil
import time

from .common import JUDGE_PRESETS, JUDGE_PROMPT, REPO, judge_name, read_json
from .figures import judge_figures
from .steps import Runner, StepFailed, failure


class Check(Runner):
    def kit_info(self) -> dict | None:
        f = self.s.kit / "kit.json"
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except ValueError:
            return None

    def install_kit(self, limit: float) -> dict:
        kit = self.kit_info()
        wheels = sorted((self.s.kit / "wheels").glob("*.whl"))
        if not wheels:
            raise StepFailed(f"no wheels in {self.s.kit}/wheels: build the kit with `make gpu-kit` and carry it")
        skip = ("transformers-", "regex-") if self.s.machine_transformers else ()
        chosen = [w for w in wheels if not w.name.startswith(skip)]
        shutil.rmtree(self.site, ignore_errors=True)
        p = self.run("kit", [self.s.python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                             "--no-cache-dir", "--disable-pip-version-check", "--target", str(self.site),
                             *map(str, chosen)], limit)
        how = "pip"
        if p.rc != 0:  # no pip there: a wheel is a zip file; unpacked, it imports the same
            import zipfile

            shutil.rmtree(self.site, ignore_errors=True)
            for w in chosen:
                with zipfile.ZipFile(w) as z:
                    z.extractall(self.site)
            how = f"unzipped (pip failed: {p.tail(3)})"
        self.env = self.make_env(with_site=True)
        return {"site": str(self.site), "wheels": [w.name for w in chosen], "installed_with": how,
                "kit_made": kit.get("made") if kit else None}

    def preflight(self, limit: float) -> dict:
        data = self.worker("preflight", "preflight", {"dry": self.s.dry}, limit)
        self.results["versions"] = data["versions"]
        self.results["gpu"] = data.get("gpus")
        self.results["driver"] = data.get("driver")
        self.placement_keys = data.get("placement_keys") or []
        missing = [m for m, err in data["imports"].items() if err]
        if missing:
            raise StepFailed("cannot import " + "; ".join(f"{m}: {data['imports'][m]}" for m in missing))
        if not self.s.dry and not data.get("cuda_available"):
            raise StepFailed("torch sees no CUDA GPU here (use --dry on a CPU machine)")
        return data

    def doctor(self, limit: float) -> dict:
        p = self.pipeline("doctor", ["stage=doctor"], limit)
        lines = p.stdout().splitlines()
        bnb = {}
        for line in lines:
            for scheme in ("int8", "nf4"):
                if line.startswith(scheme + " "):
                    bnb[scheme] = {"usable": " usable:" in line and "NOT USABLE" not in line,
                                   "detail": line.split(":", 1)[1].strip() if ":" in line else line}
        node = lines[lines.index("== this node") + 1:] if "== this node" in lines else []
        node = node[:next((i for i, x in enumerate(node) if not x.strip()), len(node))]
        info = {"rc": p.rc, "seconds": p.seconds, "node": node, "bitsandbytes": bnb}
        self.results["doctor"] = info
        if p.rc != 0:
            raise StepFailed(failure(p, "stage=doctor"), p.tail())
        unusable = [s for s in ("int8", "nf4") if not bnb.get(s, {}).get("usable")]
        if unusable:
            raise StepFailed(f"stage=doctor: bitsandbytes {', '.join(unusable)} NOT usable here: "
                             + "; ".join(bnb.get(s, {}).get("detail", "no line printed") for s in unusable), p.tail())
        return info

    def build_models(self, limit: float) -> dict:
        """The random-weight models; with their tokenizer, the stored run's judge prompt lengths. What was built
        before a failure (or the time limit) is kept for the steps after."""
        run = self.results.get("run")
        result = self.logs / "models.result.json"
        result.unlink(missing_ok=True)
        params = {"dry": self.s.dry, "kit": str(self.s.kit), "dest": str(self.models_dir), "result": str(result),
                  "models": [{"name": n, "config": c, "layers": layers} for n, c, layers in self.s.models],
                  "lengths": run and {"runs_dir": str(self.runs), "run_id": run["run_id"],
                                      "judge_prompt": JUDGE_PROMPT}}
        p = self.run("models", self.worker_args("build", params, result), limit)
        data = read_json(result) or {}
        self.results["models"] = data.get("models") or {}
        self.results["tokenizer"] = data.get("tokenizer")
        if run:
            run.update(data.get("lengths") or {})
        problems = [f"{k}: {v}" for k, v in (data.get("failed") or {}).items()]
        if run and not run.get("longest_prompt"):
            problems.append(f"could not measure the judge prompts: {data.get('lengths_error') or 'no model built'}")
        if p.rc != 0:
            problems.insert(0, failure(p, "building the models"))
        if problems:
            raise StepFailed("; ".join(problems), p.tail() if p.rc != 0 else None)
        return data

    def stored_run(self, limit: float) -> dict:
        """The kit's stored run (copied under the scratch runs folder), or, without a kit, the shipped questions'
        first references (every other one swapped for another question's) imported as a run: with `answers`
        (--dry), only the first that many (a finished stage's records cannot be cut: the kit's run is judged whole,
        its 252 answers a fraction of a second of a tiny judge)."""
        run_id = "kit"
        dest = self.runs / run_id
        shutil.rmtree(dest, ignore_errors=True)
        kit_run = self.s.kit / "runs" / run_id
        if (kit_run / "generate" / "manifest.json").is_file():
            self.runs.mkdir(parents=True, exist_ok=True)
            shutil.copytree(kit_run, dest)
            source = f"kit: {kit_run}"
        else:
            rows = self.shipped_answers()
            answers = self.s.scratch / "answers.jsonl"
            answers.write_text("".join(json.dumps(r) + "\n" for r in rows))
            p = self.pipeline("run-import", ["stage=import", f"run_id={run_id}", f"predictions={answers}"], limit)
            if p.rc != 0:
                raise StepFailed(failure(p, "stage=import"), p.tail())
            source = f"imported (no kit run in {self.s.kit}): {len(rows)} shipped questions"
        answers = sum(1 for x in (dest / "generate" / "generations.jsonl").read_text().splitlines() if x.strip())
        info = {"run_id": run_id, "source": source, "answers": answers}
        self.results["run"] = info
        return info

    def shipped_answers(self) -> list[dict]:
        """The shipped questions with their first reference as the answer, every other one another question's."""
        factoids = REPO / "src" / "pipeline" / "data" / "factoids.jsonl"
        items = [json.loads(x) for x in factoids.read_text().splitlines() if x.strip()]
        rows = []
        for i, it in enumerate(items):
            wrong = items[(i + 7) % len(items)]["answers"][0]
            rows.append({"id": it["id"], "question": it["question"], "references": it["answers"],
                         "prediction": it["answers"][0] if i % 2 == 0 else wrong})
        return rows[:self.s.answers] if self.s.answers else rows

    def judge_overrides(self, model: str, precision: str, mode: str) -> tuple[str, list[str]]:
        run = self.results["run"]
        preset = JUDGE_PRESETS[model][precision]
        name = judge_name(model, precision, mode)
        seq = run["longest_prompt"] + (self.s.reply_tokens if mode == "generate" else 0)
        o = [f"judge={preset}", f"judge.name={name}", f"judge.model={self.results['models'][model]['folder']}",
             "judge.hub_id=null", f"judge.precision={precision}", f"judge.mode={mode}",
             f"judge.placement.max_seq_len={seq}", f"judge_prompt={JUDGE_PROMPT}"]
        if mode == "generate":
            o += [f"judge_prompt.reply_tokens={self.s.reply_tokens}", "judge_prompt.stop_at_newline=false"]
        if "replicas" in getattr(self, "placement_keys", []):
            o.append("judge.placement.replicas=1")  # one copy, in the stage's own process: its memory is measured
        if self.s.dry:
            o.append("judge.placement.devices=auto")  # the GPU presets refuse a machine without GPUs
        return name, o

    def plans(self, planned: list[tuple[str, str, str]], limit: float) -> dict:
        """stage=plan for each (model, precision, mode) in `planned`, several at once."""
        if not (self.results.get("run") or {}).get("longest_prompt"):
            raise StepFailed("no stored run or no judge prompt lengths (the run or models step failed)")
        jobs = []
        for model, precision, mode in planned:
            if model not in self.results["models"]:
                continue
            name, o = self.judge_overrides(model, precision, mode)
            if self.s.only and not any(x in f"judge:{name}" for x in self.s.only):
                continue
            jobs.append((f"plan-{name}", self.pipeline_args(["stage=plan", "hardware=auto", *o])))
        parallel = max(2, min(6, (os.cpu_count() or 2) // 2))
        done = self.run_many(jobs, limit, parallel)
        self.plan_results = {}
        bad = []
        for job, p in done.items():
            name = job.removeprefix("plan-")
            f = self.runs / "plans" / f"{name}--auto.json"
            plan = json.loads(f.read_text()) if f.is_file() and p.rc == 0 else None
            self.plan_results[name] = {"rc": p.rc, "seconds": p.seconds, "plan": plan,
                                       "error": None if plan else failure(p, "stage=plan"), "tail": p.tail(8)}
            if plan is None:
                bad.append(name)
        if bad:
            raise StepFailed(f"stage=plan failed for {', '.join(bad)}",
                             "\n".join(self.plan_results[b]["tail"] for b in bad))
        return {"plans": len(done)}

    def judge(self, model: str, precision: str, mode: str, limit: float) -> dict:
        if not (self.results.get("run") or {}).get("longest_prompt"):
            raise StepFailed("no stored run or no judge prompt lengths (the run or models step failed)")
        if model not in self.results["models"]:
            raise StepFailed(f"no {model} model (the models step failed)")
        name, o = self.judge_overrides(model, precision, mode)
        entry = {"judge": name, "model": model, "precision": precision, "mode": mode,
                 "preset": JUDGE_PRESETS[model][precision], "seq_len": None, "ok": False}
        self.results["judges"].append(entry)
        p = self.pipeline(f"judge-{name}", ["stage=judge", f"run_id={self.results['run']['run_id']}",
                                            "report.plots=false", *o], limit)
        stage = self.runs / self.results["run"]["run_id"] / "judge" / name
        manifest = read_json(stage / "manifest.json")
        plan = read_json(stage / "plan.json")
        planned = getattr(self, "plan_results", {}).get(name, {})
        entry.update(judge_figures(manifest, plan, planned.get("plan")))
        entry["plan_stage_seconds"] = planned.get("seconds")
        entry["stage_seconds"] = p.seconds
        if p.rc != 0 or manifest is None:
            raise StepFailed(failure(p, "stage=judge"), p.tail())
        entry["ok"] = True
        return entry

    def speed_run(self, limit: float) -> dict:
        """The stored run's answers `speed` times over (ids suffixed ~1, ~2, ...), imported as run `speed`: enough
        judging per process for answers/s to be a speed rather than warm-up (252 answers are 1-5 s on an H200)."""
        src = self.runs / self.results["run"]["run_id"] / "generate" / "generations.jsonl"
        rows = [json.loads(x) for x in src.read_text().splitlines() if x.strip()]
        answers = self.s.scratch / "speed-answers.jsonl"
        answers.write_text("".join(
            json.dumps({"id": f"{r['id']}~{k}", "question": r["question"], "references": r["references"],
                        "prediction": r["prediction"]}) + "\n" for k in range(1, self.s.speed + 1) for r in rows))
        shutil.rmtree(self.runs / "speed", ignore_errors=True)
        p = self.pipeline("speed-import", ["stage=import", "run_id=speed", f"predictions={answers}"], limit)
        if p.rc != 0:
            raise StepFailed(failure(p, "stage=import"), p.tail())
        info = {"run_id": "speed", "answers": len(rows) * self.s.speed, "copies": self.s.speed}
        self.results["speed_run"] = info
        return info

    def speed_judge(self, model: str, precision: str, allocator: str, limit: float) -> dict:
        """One logprob judge on the speed run, under the stage's allocator ("expandable", its default) or the CUDA
        caching allocator's own ("default": the user's PYTORCH_ALLOC_CONF=expandable_segments:False wins)."""
        if not (self.results.get("speed_run") or {}).get("answers"):
            raise StepFailed("no speed run (the speed-run step failed)")
        base, o = self.judge_overrides(model, precision, "logprob")
        name = f"{base}-{allocator}"
        o = [f"judge.name={name}" if x.startswith("judge.name=") else x for x in o]
        entry = {"judge": name, "model": model, "precision": precision, "mode": "logprob", "run": "speed",
                 "allocator": allocator, "preset": JUDGE_PRESETS[model][precision], "seq_len": None, "ok": False}
        self.results["judges"].append(entry)
        env = dict(self.env)
        if allocator == "default":
            env["PYTORCH_ALLOC_CONF"] = "expandable_segments:False"
        p = self.pipeline(f"speed-{name}", ["stage=judge", "run_id=speed", "report.plots=false", *o], limit, env=env)
        stage = self.runs / "speed" / "judge" / name
        manifest = read_json(stage / "manifest.json")
        entry.update(judge_figures(manifest, read_json(stage / "plan.json"), None))
        entry["allocator_recorded"] = ((manifest or {}).get("gpu_memory") or [{}])[0].get("allocator")
        entry["stage_seconds"] = p.seconds
        if p.rc != 0 or manifest is None:
            raise StepFailed(failure(p, "stage=judge"), p.tail())
        entry["ok"] = True
        return entry

    def generate(self, limit: float) -> dict:
        """stage=generate with the 1B, then the baselines (worker) on the same questions; tokens/s of each."""
        folder = self.results["models"].get("llama32-1b", {}).get("folder")
        if not folder:
            raise StepFailed("no llama32-1b model (the models step failed)")
        info = {"model": "llama32-1b", "new_tokens": self.s.new_tokens, "methods": {}}
        self.results["generate"] = info
        t_stage = time.monotonic()
        p, stage_ok = self.generate_stage(folder, info, limit * 0.5)
        questions = self.runs / "gen-1b" / "generate" / "generations.jsonl"
        if not questions.is_file():
            questions = self.runs / self.results["run"]["run_id"] / "generate" / "generations.jsonl" \
                if self.results.get("run") else None
        remaining = limit - (time.monotonic() - t_stage)
        base = self.worker("generate-baselines", "baselines", {
            "folder": folder, "questions": str(questions) if questions else None, "new_tokens": self.s.new_tokens,
            "one_at_a_time": self.s.one_at_a_time, "limit": self.s.generate_limit,
            "runs_dir": str(self.runs)}, max(10.0, remaining))
        info.setdefault("batch_size", base.get("batch_size"))
        info.setdefault("precision", base.get("precision"))
        info.setdefault("device", base.get("device"))
        info["methods"].update(base["methods"])
        one = info["methods"].get("one prompt at a time (model.generate)", {}).get("tokens_per_s")
        for r in info["methods"].values():
            r["vs_one_at_a_time"] = round(r["tokens_per_s"] / one, 2) if one and r.get("tokens_per_s") else None
        if not stage_ok:
            raise StepFailed(failure(p, "stage=generate"), p.tail())
        return info

    def generate_stage(self, folder: str, info: dict, limit: float):
        """stage=generate itself, a fixed number of new tokens per answer; its figures from its manifest."""
        o = ["stage=generate", "generator=llama32-1b", f"generator.model={folder}", "generator.stop_at_newline=false",
             f"generator.max_new_tokens={self.s.new_tokens}", "run_id=gen-1b", "overwrite=true"]
        if self.s.generate_limit:
            o.append(f"dataset.limit={self.s.generate_limit}")
        p = self.pipeline("generate-stage", o, limit)
        m = read_json(self.runs / "gen-1b" / "generate" / "manifest.json")
        stage_ok = p.rc == 0 and m is not None
        if stage_ok:
            t = m["timings"]
            info["batch_size"] = m["config"]["generator"]["batch_size"]
            info["precision"] = m["generator"]["precision"]
            info["device"] = m["generator"]["device"]
            info["methods"]["stage=generate (greedy_batch)"] = {
                "prompts": m["records"], "tokens": t["generated_tokens"], "seconds": t["generate_s"],
                "tokens_per_s": t["tokens_per_s"], "questions_per_s": t["questions_per_s"], "load_s": t["load_s"],
                "gpu_memory": m.get("gpu_memory")}
        return p, stage_ok
