"""Peer tools that `make bench` measures the pipeline against, side by side in the same run (never a stored figure).

Each peer lives in its own scratch virtualenv, installed by `make bench-peers` (scripts/bench_peers.sh); when it is
absent, the benchmark prints one line saying the comparison was skipped, why, and that command.

    lmeval.py          the generate stage vs lm-evaluation-harness (HF backend) on the same questions and model
    lm_eval_timed.py   run by the peer's interpreter: lm-eval's own command line, with its generation phase timed
"""
