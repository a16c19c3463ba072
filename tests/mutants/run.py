#!/usr/bin/env python3
"""Shows that the simulation has teeth: applies one mutation at a time to the core (in a
scratch copy of the tree), runs the simulation, and reports the first seed that fails.

Usage: tests/mutants/run.py [SEQUENCES]   (default 10000; run from the repository root)
Each mutation is a single change that breaks a documented behaviour; a mutation that survives
the whole run is reported as such.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

CORE = "src/supervisor/core"
MUTATIONS = [
    ("abort keeps the failed generation's starting workers",
     f"{CORE}/reload/abort.rs",
     "if w.generation == failed && w.is_live() && !w.is_ready() {",
     "if false && w.generation == failed && w.is_live() && !w.is_ready() {"),
    ("old workers retired before the canary passed",
     f"{CORE}/retire.rs",
     ".is_some_and(|r| !r.canary_passed())\n        {\n            return;",
     ".is_some_and(|r| !r.canary_passed() && false)\n        {\n            return;"),
    ("workers are started after the stop began",
     f"{CORE}/pool.rs",
     "        if self.phase != Phase::Running || self.reload.is_loading() {\n            return;\n        }",
     "        if self.reload.is_loading() {\n            return;\n        }"),
    ("helpers of a stopped worker are not waited for",
     f"{CORE}/pool.rs",
     "            self.lingering.push(Lingering {\n                pgid: w.pid,\n                escalation,\n            });\n",
     "            let _ = escalation;\n"),
    ("exit while forks are in flight",
     f"{CORE}/stop.rs",
     " && self.in_flight.is_empty()",
     ""),
    ("in-flight forks do not count as a generation (queued reload starts a third)",
     f"{CORE}/reload/mod.rs",
     " || !self.in_flight.is_empty()",
     ""),
    ("restarts ignore the minimum gap after the last start",
     f"{CORE}/mod.rs",
     "at = at.max(last + min_gap);",
     "let _ = (last, min_gap);"),
    ("READY=1 on the first ready worker, whatever the quorum",
     f"{CORE}/pool.rs",
     "if ready >= needed {",
     "if ready >= 1 {"),
    ("no READY=1 after a reload that failed",
     f"{CORE}/reload/mod.rs",
     "if std::mem::take(&mut self.reload.reloading_sent) {",
     "if std::mem::take(&mut self.reload.reloading_sent) && false {"),
    ("a reload before the first READY=1 still says RELOADING=1",
     f"{CORE}/reload/mod.rs",
     "self.reload.reloading_sent = self.ready_sent;\n        if self.ready_sent {",
     "self.reload.reloading_sent = true;\n        if true {"),
    ("a crash loop gives up while a reload rolls out (STOPPING=1 during a reload)",
     f"{CORE}/pool.rs",
     "if self.phase != Phase::Running || self.reload.rollout.is_some() {",
     "if self.phase != Phase::Running {"),
    ("a reload that settles says STOPPING=1 instead of READY=1",
     f"{CORE}/reload/mod.rs",
     "self.out.push(Effect::Systemd(vec![Sd::Ready]));",
     "self.out.push(Effect::Systemd(vec![Sd::Stopping]));"),
    ("the ready timeout is never enforced",
     f"{CORE}/worker.rs",
     "State::Spawning => Some((self.started + cfg.ready_timeout, Timer::ReadyTimeout)),",
     "State::Spawning => None,"),
    ("events of one wake-up in arrival order, not by priority",
     f"{CORE}/events.rs",
     "pub fn rank(&self) -> u8 {",
     "pub fn rank(&self) -> u8 {\n        #[allow(unreachable_code)]\n        return 0;"),
]


def main():
    sequences = sys.argv[1] if len(sys.argv) > 1 else "10000"
    root = os.getcwd()
    scratch = tempfile.mkdtemp(prefix="preforkd-mutants-")
    target = os.path.join(scratch, "target")
    tree = os.path.join(scratch, "tree")
    shutil.copytree(root, tree, ignore=shutil.ignore_patterns("target", ".git"))
    env = dict(os.environ, CARGO_TARGET_DIR=target, PREFORKD_SIM_SEQUENCES=sequences)
    caught = 0
    try:
        for name, path, old, new in MUTATIONS:
            file = os.path.join(tree, path)
            text = open(file).read()
            if text.count(old) != 1:
                print(f"SKIPPED  {name}: the code to mutate was not found once in {path}")
                continue
            open(file, "w").write(text.replace(old, new))
            try:
                run = subprocess.run(
                    ["cargo", "test", "--quiet", "--test", "simulation"],
                    cwd=tree, env=env, capture_output=True, text=True)
            finally:
                open(file, "w").write(text)
            out = run.stdout + run.stderr
            seed = re.search(r"seed (\d+) failed", out)
            if run.returncode != 0 and seed:
                why = re.search(r"invariant violated: ([^\n]*)", out) or re.search(
                    r"failed \(replay[^\n]*\n([^\n]*)", out)
                reason = why.group(1) if why else "?"
                print(f"CAUGHT   {name}: first failing seed {seed.group(1)} ({reason[:100]})")
                caught += 1
            elif run.returncode != 0:
                print(f"BROKEN   {name}: did not build or failed otherwise\n{out[-2000:]}")
            else:
                print(f"SURVIVED {name}: {sequences} sequences passed")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{caught} of {len(MUTATIONS)} mutations caught")


if __name__ == "__main__":
    main()
