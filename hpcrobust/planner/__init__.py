"""`hpcrobust plan`: what a sweep will cost, need and look like before it is submitted.

    arch.py       each model's architecture without weights (config.json, or a table of known shapes)
    tokens.py     token counts of the task's examples, chunk by chunk (the tokenizer, or characters/4)
    flops.py      nominal and actual FLOPs of each kind of model call, with the run's own FLOP functions
    costs.py      every phase of every round of every run, replaying the run's deterministic choices
    memory.py     peak memory per rank for training and attack scoring
    devices.py    GPUs' peak rates, a stated rate, or this CPU measured
    calibrate.py  utilisation measured from a finished sweep's results file
    build.py      the plan: sizes, times, the job/group layout of `submit`
    checks.py     warnings (does not fit, a round longer than the time limit, idle ranks) and notes
    render.py     Markdown and JSON
    command.py    the command line
"""
