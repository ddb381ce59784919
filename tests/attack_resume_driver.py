"""`hpcrobust run` that logs every attack proposal and pauses at a chosen moment inside an attack, until it is
killed (tests/test_attack_resume.py).

    python tests/attack_resume_driver.py TAG MODE MARKER CONFIG [key=value ...]

Every proposal (one example's candidates at one step) is appended to `proposals-TAG-<pid>.txt` as
`purpose round attack example step`, and every kept attack state to `saves-TAG-<pid>.txt` as `label step`, both
in the working folder. MODE is `none` (run to the end), or `WHEN:ROUND:ATTACK:STEP` with WHEN
- `propose`: pause at the first proposal of that step (nothing of the step is done yet);
- `scored`: pause after the step's candidates are proposed and scored, before they are used;
- `request`: ask for a save (savepoint.request()) at the first proposal of that step; pause right after the next
  kept attack state;
- `saved` (ROUND is ignored): pause right after ATTACK kept its state at STEP (ensemble GCG: at that example).
Ensemble GCG's gradients are logged as proposals `ensemble 0 ens 0 EXAMPLE` (one per size and iteration).
A process that pauses writes MARKER (what it paused on) and sleeps, as a kill at that moment would find it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> int:
    tag, mode, marker, *rest = sys.argv[1:]
    from hpcrobust import savepoint
    from hpcrobust.attacks import base, ensemble
    from hpcrobust.attacks.registry import attack_class, known_types
    from hpcrobust.attacks.state import AttackSaver
    from hpcrobust.sweep.command import run_command

    pid = os.getpid()
    proposals = open(f"proposals-{tag}-{pid}.txt", "a")  # noqa: SIM115 (open for the whole run)
    saves = open(f"saves-{tag}-{pid}.txt", "a")  # noqa: SIM115
    when, target = (mode.split(":", 1) + [""])[:2] if mode != "none" else ("none", "")
    now = {"at": None}  # (round, attack, step) of the step in progress on this rank

    def pause(what: str) -> None:
        Path(marker).write_text(what)
        while True:
            time.sleep(1)

    def wrap(cls) -> None:
        propose = cls.propose

        def logged(self, st, step, engine, propose=propose):
            rnd, name = self.key[-2], self.cfg.name
            now["at"] = f"{rnd}:{name}:{step}"
            if now["at"] == target and when == "propose":
                pause(f"propose {name} {step}")
            if now["at"] == target and when == "request":
                savepoint.request()
            proposals.write(f"{self.key[0]} {rnd} {name} {st.example} {step}\n")
            proposals.flush()
            return propose(self, st, step, engine)

        cls.propose = logged

    for t in known_types():
        cls = attack_class(t)
        if "propose" in vars(cls):
            wrap(cls)

    score = base._score_round

    def scored(*args, **kwargs):
        out = score(*args, **kwargs)
        if when == "scored" and now["at"] == target:
            pause(f"scored {target}")
        return out

    base._score_round = scored
    load = AttackSaver.load

    def loaded(self, check):
        now["at"] = None  # an attack starts: its setup is no step of the last one
        return load(self, check)

    AttackSaver.load = loaded
    save = AttackSaver.save

    def kept(self, check, state):
        save(self, check, state)
        saves.write(f"{self.label} {state.step}\n")
        saves.flush()
        if when == "request" and savepoint.requested():
            pause(f"saved {self.label} {state.step}")

    AttackSaver.save = kept
    save_arrays = AttackSaver.save_arrays

    def kept_arrays(self, check, step, wall_s, arrays):
        save_arrays(self, check, step, wall_s, arrays)
        saves.write(f"{self.label} {step}\n")
        saves.flush()
        if when == "saved" and self.label.endswith(f": {target.split(':')[1]}") and step == int(target.split(":")[2]):
            pause(f"saved {self.label} {step}")

    AttackSaver.save_arrays = kept_arrays
    gradient = ensemble.token_gradient

    def logged_gradient(engine, key, enc, tokens):
        proposals.write(f"ensemble 0 ens 0 {key}\n")
        proposals.flush()
        return gradient(engine, key, enc, tokens)

    ensemble.token_gradient = logged_gradient
    return run_command(rest[0], rest[1:], quiet=False)


if __name__ == "__main__":
    sys.exit(main())
