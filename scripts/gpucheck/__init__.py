"""The GPU proof check's parts; scripts/gpu_check.py is its entry point (arguments, the step list, the deadline).

  common     paths, the models and judge presets, the settings, small file helpers
  steps      running one step: its subprocesses under their limits, what failed, the result files after each step
  check      the steps themselves: kit, preflight, doctor, stored run, models, plans, judges, generate
  models     (worker) the random-weight models from the shipped configs and their padded tokenizer folders
  baselines  (worker) plain `model.generate`, one prompt at a time, and the stage's own decoding path
  workers    (worker) the preflight, and the dispatch of `gpu_check.py _worker WHAT`
  figures    planned against measured memory per device, from a judge stage's plan and manifest
  tables     gpu-check.md: the results as Markdown tables
"""
