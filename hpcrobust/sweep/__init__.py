"""The life of a sweep, one step per file (read top-down; sweep/README.md has the map):

    command.py      `hpcrobust run`: load the config, agree on errors across ranks, hold the lock
    checks.py       every check on user input, before any work
    plan.py         the runs (model x seed), in a fixed order, and each run's rounds
    context.py      what each step is handed (config, layout, task, results file, plan, hooks)
    driver.py       the loop: round by round, every group's runs, the shared phases, one commit
    round.py        one round of one run: load, train, evaluate, checkpoint, record
    shared.py       where runs meet: shared RandomToken draws, ensemble GCG, the transfer matrix
    checkpoint.py   what a round leaves for the next one
    hooks.py        named points that launch code and tests attach to
    debug.py        the test-only debug.* switches, as hooks
"""
