"""LLM-as-judge batch evaluation pipeline.

Stages (each a module with `run(cfg)`), all driven by Hydra from `python -m pipeline stage=<name>`:

    generate  greedy answers from a small model over a QA data set  -> runs/<run_id>/generate/
    import    answers produced elsewhere (with optional human labels) as a run
    judge     rescoring of stored answers by a large judge model    -> runs/<run_id>/judge/<judge>/
    report    result CSVs and figures from the stored records; a leaderboard across runs
    merge     the shards of SLURM array tasks merged and checked
    submit    generate array -> judge array -> report, chained on SLURM
    plan      the judge's placement plan on declared or detected hardware (placement/; no weights read)
    doctor    what this node can run

From Python (pipeline/api.py): `pipeline.run(stage, *overrides)`, `pipeline.load_samples(run_id)`,
`pipeline.load_metrics(run_id)`, `pipeline.load_leaderboard()`, `pipeline.load_comparisons()`, `pipeline.settings(...)`.
"""

__version__ = "0.1.0"
API = ("run", "settings", "load_samples", "load_metrics", "load_leaderboard", "load_comparisons")


def __getattr__(name: str):
    """The Python API (api.py), imported on first use: `import pipeline` itself stays light."""
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
