"""Mutation score of the modules that carry the README's promises, printed like a benchmark.

Each group of modules is mutated by mutmut 3 (requirements-mutation.txt) in a fresh copy of the
working tree under build/mutation/<group>, against the tests that pin it; mutmut runs, for each
mutant, only the tests that execute the mutated function. Mutants that no test can tell from
the original are listed, with the reason, in docs/mutation.md and left out of the score.

    python benchmarks/mutation_score.py [group ...] [--max-children N] [--report-only | --recheck | --resume]

Groups: math (core/), rows (generation/cfg_rows, steering, job), glue (scripts/safe_denoiser.py).
On 2 shared CPU cores a full run takes one to three hours; `mutmut browse` in build/mutation/<group>
shows every mutant of the last run. ``--resume`` continues an interrupted run, ``--recheck`` runs
only its survivors again after tests were added.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORK = ROOT / "build" / "mutation"
EQUIVALENT_DOC = ROOT / "docs" / "mutation.md"
SOURCE_PATHS = ("lib_safe_denoiser", "scripts", "safe_denoiser_webui")
"""Copied into mutmut's tree (tests import them from there); only each group's modules are mutated."""
SKIPPED = {".git", ".venv", "build", "__pycache__", ".pytest_cache", ".ruff_cache", "mutants", "demo_out", "out"}
DETECTED = {"killed", "timeout", "segfault", "caught by type check", "killed when applied"}
"""Verdicts where the tests told the mutant from the original."""
IMPORT_TIME = ("scripts.safe_denoiser.x__step_callback__",)
"""Functions that run while their module is imported (a decorator): mutmut switches a mutant on in
code that is already imported, so it cannot run these; each is applied to the copy's source and
the group's tests are run on it instead."""


@dataclass(frozen=True)
class Group:
    modules: tuple[str, ...]
    tests: tuple[str, ...]


GROUPS = {
    "math": Group(("lib_safe_denoiser/core/denoiser.py", "lib_safe_denoiser/core/kernel.py",
                   "lib_safe_denoiser/core/schedules.py"), ("tests/core", "tests/generation")),
    "rows": Group(("lib_safe_denoiser/generation/cfg_rows.py", "lib_safe_denoiser/generation/steering.py",
                   "lib_safe_denoiser/generation/job.py"), ("tests/generation", "tests/glue")),
    "glue": Group(("scripts/safe_denoiser.py",), ("tests/glue",)),
}


def equivalent_mutants() -> dict[str, str]:
    """Mutant name -> reason, from the table rows of docs/mutation.md (| `name` | reason |)."""
    rows = re.findall(r"^\|\s*`([^`]+__mutmut_\d+)`\s*\|\s*(.+?)\s*\|\s*$", EQUIVALENT_DOC.read_text("utf-8"), re.M)
    return dict(rows)


def tracked_files() -> list[Path]:
    """The working tree's files: git's view (tracked and untracked, not ignored), or a walk without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, check=True).stdout
        files = [Path(p) for p in out.decode().split("\0") if p and (ROOT / p).is_file()]
        return [p for p in files if not SKIPPED.intersection(p.parts)]  # build/ holds the last runs
    except (OSError, subprocess.CalledProcessError):
        return [p.relative_to(ROOT) for p in ROOT.rglob("*")
                if p.is_file() and not SKIPPED.intersection(p.relative_to(ROOT).parts)]


def prepare(name: str, group: Group) -> Path:
    """A fresh copy of the tree with mutmut's configuration for the group."""
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    for rel in tracked_files():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, work / rel)
    top = sorted({rel.parts[0] for rel in tracked_files()} - {*SOURCE_PATHS, "tests", "setup.cfg", "pyproject.toml"})

    def lines(values) -> str:
        return "".join(f"\n    {v}" for v in values)

    (work / "setup.cfg").write_text(
        "[mutmut]\n"
        f"source_paths ={lines(SOURCE_PATHS)}\n"
        f"only_mutate ={lines(group.modules)}\n"
        f"pytest_add_cli_args_test_selection ={lines(group.tests)}\n"
        f"also_copy ={lines(top)}\n"
        "process_isolation = forkserver\n", "utf-8")  # torch is not fork-safe once its threads run
    return work


def run(name: str, group: Group, max_children: int, *, resume: bool = False) -> dict[str, str]:
    """The verdict per mutant name, also kept in build/mutation/<group>/verdicts.json. ``resume``
    continues the group's last run where it stopped (mutmut keeps each verdict as it goes)."""
    work = WORK / name
    if not resume:
        work = prepare(name, group)
    elif not (work / "mutants").is_dir():
        sys.exit(f"no run of {name!r} to continue in {work}: run it first")
    else:
        check_unchanged(name, group)
    log = work / "mutmut.log"
    print(f"{name}: mutating {', '.join(group.modules)} against {', '.join(group.tests)} (log: {log})", flush=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    with log.open("a" if resume else "w") as out:
        subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)], cwd=work,
                       stdout=out, stderr=subprocess.STDOUT, env=env, check=True)
    verdicts = mutmut_results(work, env)
    for mutant in sorted(m for m, v in verdicts.items() if v not in DETECTED and m.startswith(IMPORT_TIME)):
        verdicts[mutant] = apply_and_test(work, group, mutant, env)
    (work / "verdicts.json").write_text(json.dumps(verdicts, indent=1, ensure_ascii=False), "utf-8")
    return verdicts


def recheck(name: str, group: Group, max_children: int) -> dict[str, str]:
    """Run again only the mutants the group's last run left undetected and docs/mutation.md does not
    list as equivalent, against the tree's tests (and other modules) as they are now: the check after
    writing tests for them, in minutes instead of a full run. The mutated modules must be those of that
    run, and tests only added since (a removed or weakened test can let a mutant it killed survive: run
    in full)."""
    verdicts = last_run(name)
    work = WORK / name
    check_unchanged(name, group)
    # today's tests may use modules written since the run: refresh every file but the mutated ones, in the
    # copy and in mutmut's own copy of it (whose mutated modules hold the mutants)
    for rel in tracked_files():
        if rel.as_posix() in group.modules:
            continue
        for base in (work, work / "mutants"):
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, base / rel)
    equivalent = equivalent_mutants()
    left = sorted(m for m, v in verdicts.items() if v not in DETECTED and m not in equivalent)
    print(f"{name}: checking again {len(left)} mutant(s) against the current tests (log: {work / 'mutmut.log'})",
          flush=True)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    regular = [m for m in left if not m.startswith(IMPORT_TIME)]
    if regular:
        with (work / "mutmut.log").open("a") as out:
            subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *regular],
                           cwd=work, stdout=out, stderr=subprocess.STDOUT, env=env, check=True)
        verdicts.update({m: v for m, v in mutmut_results(work, env).items() if m in regular})
    for mutant in (m for m in left if m.startswith(IMPORT_TIME)):
        verdicts[mutant] = apply_and_test(work, group, mutant, env)
    (work / "verdicts.json").write_text(json.dumps(verdicts, indent=1, ensure_ascii=False), "utf-8")
    return verdicts


def check_unchanged(name: str, group: Group) -> None:
    """Stop unless the group's modules are those its last run mutated."""
    changed = [m for m in group.modules if (ROOT / m).read_bytes() != (WORK / name / m).read_bytes()]
    if changed:
        sys.exit(f"{name}: {', '.join(changed)} changed since the last run: run the group in full")


def mutmut_results(work: Path, env: dict[str, str]) -> dict[str, str]:
    """mutmut's verdict per mutant of its last run in ``work``."""
    results = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=work, env=env,
                             capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^\s*(\S+__mutmut_\d+): (.+?)\s*$", results, re.M))


def last_run(name: str) -> dict[str, str]:
    """The verdicts of the group's last run."""
    path = WORK / name / "verdicts.json"
    if not path.is_file():
        sys.exit(f"no finished run of {name!r} in {path.parent}: run it first")
    return json.loads(path.read_text("utf-8"))


def apply_and_test(work: Path, group: Group, name: str, env: dict[str, str]) -> str:
    """Write one mutant into the copy's source, run the group's tests on it, put the source back."""
    path = work / module_of(name)
    original = path.read_text("utf-8")
    try:
        subprocess.run([sys.executable, "-m", "mutmut", "apply", name], cwd=work, env=env, capture_output=True,
                       check=True)
        tests = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *group.tests],
                               cwd=work, env=env, capture_output=True)
    finally:
        path.write_text(original, "utf-8")
    return "killed when applied" if tests.returncode else "survived when applied"


def module_of(mutant: str) -> str:
    """lib_safe_denoiser.core.kernel.x_kernel_stats__mutmut_3 -> lib_safe_denoiser/core/kernel.py"""
    parts = mutant.split(".")
    first = next(i for i, part in enumerate(parts) if part.startswith(("x_", "xǁ")))
    return "/".join(parts[:first]) + ".py"


def report(verdicts: dict[str, str], equivalent: dict[str, str]) -> list[str]:
    """Prints the table; returns the undetected mutants that are not listed as equivalent."""
    print(f"{'module':44} {'mutants':>7} {'equiv.':>6} {'killed':>6} {'left':>5} {'score':>7}")
    unexplained = []
    for module in sorted({module_of(m) for m in verdicts}):
        names = [m for m in verdicts if module_of(m) == module]
        detected = [m for m in names if verdicts[m] in DETECTED]
        excluded = [m for m in names if verdicts[m] not in DETECTED and m in equivalent]
        left = [m for m in names if verdicts[m] not in DETECTED and m not in equivalent]
        scored = len(names) - len(excluded)
        score = 100.0 * len(detected) / scored if scored else 100.0
        print(f"{module:44} {len(names):7} {len(excluded):6} {len(detected):6} {len(left):5} {score:6.1f}%")
        unexplained += left
    stale = sorted(m for m in equivalent if m in verdicts and verdicts[m] in DETECTED)
    for m in stale:
        print(f"  listed as equivalent but detected now (remove it from docs/mutation.md): {m}")
    return unexplained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("groups", nargs="*", metavar="group", help=f"any of {', '.join(GROUPS)} (default: all)")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--report-only", action="store_true",
                       help="score the last run again (after editing docs/mutation.md), without running")
    again.add_argument("--recheck", action="store_true",
                       help="run again only the last run's survivors, against the tests as they are now")
    again.add_argument("--resume", action="store_true", help="continue an interrupted run where it stopped")
    args = parser.parse_args()
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
    equivalent = equivalent_mutants()
    verdicts: dict[str, str] = {}
    for name in args.groups or GROUPS:
        if args.report_only:
            verdicts.update(last_run(name))
        elif args.recheck:
            verdicts.update(recheck(name, GROUPS[name], args.max_children))
        else:
            verdicts.update(run(name, GROUPS[name], args.max_children, resume=args.resume))
    counts = Counter(verdicts.values())
    print(f"\n{len(verdicts)} mutants: " + ", ".join(f"{n} {v}" for v, n in counts.most_common()))
    unexplained = report(verdicts, equivalent)
    for m in unexplained:
        print(f"  survived: {m} ({verdicts[m]})")
    if unexplained:
        print("Kill them with a test, or list them in docs/mutation.md with the reason they are equivalent "
              "(`python -m mutmut show NAME` in build/mutation/<group> prints the change).")


if __name__ == "__main__":
    main()
