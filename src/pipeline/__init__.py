"""LLM-as-judge batch evaluation pipeline.

Stages (each a module with `run(cfg)`), all driven by Hydra from `python -m pipeline stage=<name>`:

    generate  greedy answers from a small model over a QA data set  -> runs/<run_id>/generate/
    judge     rescoring of stored answers by a large judge model    -> runs/<run_id>/judge/<judge>/
    report    result CSVs rewritten from the stored records
    plan      the judge's placement plan on declared or detected hardware (plan.py; no weights read)
    doctor    what this node can run
"""

__version__ = "0.1.0"
