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
"""

__version__ = "0.1.0"
