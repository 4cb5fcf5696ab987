"""Entry point: python -m pipeline stage=<stage> [key=value ...]

    python -m pipeline stage=generate                          # answers from the embedded model -> runs/<id>/
    python -m pipeline stage=judge                             # newest run, embedded judge -> CSVs
    python -m pipeline stage=judge run_id=<id> judge=llama70b-8bit
    python -m pipeline stage=import predictions=answers.jsonl  # answers made elsewhere become a run
    python -m pipeline stage=report run_id=<id>                # rewrite the CSVs from stored records
    python -m pipeline stage=plan judge=llama70b-8bit hardware=4xA100-40GB   # placement plan, no weights read
    python -m pipeline stage=doctor                            # what this node can run
    python -m pipeline stage=submit slurm.partition=gpu ...    # generate array -> judge array -> report on SLURM
    python -m pipeline stage=merge run_id=<id>                 # merge the shards of array tasks
    python -m pipeline --cfg job                               # print the composed config

Configuration is Hydra: conf/config.yaml plus the groups conf/{generator,judge,judge_prompt,dataset,hardware}/, checked
against the typed schema in config.py.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import sys

# Before anything imports torch: CUDA memory in expandable segments, unless the user chose an allocator setting. The
# default pool keeps freed blocks of each size for reuse, and the judge's batches differ in length (and LLM.int8's
# outlier columns in number), so on the GPU check an int8 judge's reserved memory grew to 1.75x what it had allocated
# (17.8 GB for 10.1), past its plan; the plan's reserves count allocations.
ALLOCATOR = "expandable_segments:True"
if not (os.environ.get("PYTORCH_ALLOC_CONF") or os.environ.get("PYTORCH_CUDA_ALLOC_CONF")):
    os.environ["PYTORCH_ALLOC_CONF"] = os.environ["PYTORCH_CUDA_ALLOC_CONF"] = ALLOCATOR  # torch >= 2.9 reads the first

import hydra  # noqa: E402

from .checks import check  # noqa: E402
from .config import conf_dir, register  # noqa: E402
from .errors import PipelineError, os_error_message  # noqa: E402
from .interrupts import StageStopped, requeue_this_job  # noqa: E402


def setup_logging() -> None:
    logger = logging.getLogger("pipeline")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


STAGE_MODULES = {"import": "importer", "plan": "planstage", "label": "labels"}  # "import" cannot be a module name


def run_stage(cfg):
    """Check every value, then run the stage module named by cfg.stage. It is one of config.Stage: Hydra refuses
    any other value while composing the config (and precheck says so in one line)."""
    check(cfg)
    if (cfg.stage == "generate" and cfg.generator.engine == "hf") or (cfg.stage == "judge" and cfg.judge.engine == "hf"):
        from .hardware import check_job_torch

        check_job_torch()  # a GPU job with a CPU build of torch: one line, before any work
    module = importlib.import_module(f"pipeline.{STAGE_MODULES.get(cfg.stage, cfg.stage)}")
    return module.run(cfg)


def precheck(argv: list[str]) -> None:
    """Compose the config once before Hydra does, so that a misspelt key or a value outside its choices is one line
    and exit status 2 (Hydra's own report is several lines and status 1). Only for plain key=value command lines:
    flags (-m, --cfg, --help, ...) are Hydra's."""
    if any(a.startswith("-") for a in argv):
        return
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            compose("config", overrides=argv)
    except (HydraException, OmegaConfBaseException) as e:
        cause = e.__cause__ or e.__context__
        text = str(e) + ("\n" + str(cause) if cause is not None and cause is not e and str(cause) not in str(e) else "")
        noise = ("full_key", "reference_type", "object_type", "Set the environment", "Config search path",
                 "provider=")
        lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip() and
                 not line.strip().startswith(noise)]
        said = lines[0]
        for line in lines[1:]:  # one line: "Could not find 'hardware/x': Available options in 'hardware': a, b, c"
            said += (" " if said.endswith(":") else (": " if said.count(":") < 2 else ", ")) + line
        print(f"error: {said}. Every key, its type and its choices are in src/pipeline/config.py; "
              "`python -m pipeline --cfg job` prints the config.", file=sys.stderr)
        sys.exit(2)
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()


register()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg) -> None:
    setup_logging()
    try:
        run_stage(cfg)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            raise
        print(f"error: {os_error_message(e)}", file=sys.stderr)
        sys.exit(2)
    except StageStopped as e:
        print(f"{e}.", file=sys.stderr)
        if e.signum == signal.SIGUSR1:  # SLURM's warning before the time limit: come back in a new allocation
            outcome = requeue_this_job()
            if outcome:
                print(outcome, file=sys.stderr)
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        print("interrupted: finished batches are kept; run the same command again to resume.", file=sys.stderr)
        sys.exit(130)


# A full disk, a read-only or forbidden folder, a file where a folder should be: the user's to fix, said in one line.
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
               errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG}

if __name__ == "__main__":
    precheck(sys.argv[1:])
    main()
