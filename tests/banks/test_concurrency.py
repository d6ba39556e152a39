"""Several writers on one data directory: threads, two processes, and a process killed mid-write."""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import signal
import threading
import time

import pytest

from lib_safe_denoiser.banks.files import TEMP_PREFIX
from lib_safe_denoiser.banks.store import BankStore
from tests.banks.store_helpers import BASE_IMAGES, append_rounds, bank_is_whole, churn_forever, make_images

SPAWN_ROUNDS = 12
SPAWN_PER_ROUND = 2
KILL_ROUNDS = 8


def collect(results, workers, timeout: float = 120.0) -> list:
    """One result per worker; fails at once (not after the timeout) if a worker died."""
    done = []
    deadline = time.time() + timeout
    while len(done) < len(workers):
        try:
            done.append(results.get(timeout=0.2))
        except queue.Empty:
            failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            assert not failed, f"a worker process failed (exit code {failed[0]}); its traceback is above"
            assert time.time() < deadline, "the workers did not finish in time"
    for w in workers:
        w.join(30)
    return done


def test_threads_appending_to_one_bank_lose_nothing(tmp_path):
    store = BankStore(tmp_path / "store")
    store.create("b", make_images(tmp_path / "base", 1))
    groups = [make_images(tmp_path / f"t{t}", 5, start=100 * (t + 1)) for t in range(4)]
    errors: list[BaseException] = []

    def work(files):
        try:
            for f in files:
                store.add_images("b", [f])
        except BaseException as e:  # surfaced below: a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(g,)) for g in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.get("b").n_images == 21 and bank_is_whole(store, "b")


def test_two_processes_appending_to_one_bank_at_once_lose_nothing(tmp_path):
    root = tmp_path / "store"
    store = BankStore(root)
    store.create("shared", make_images(tmp_path / "base", 1))
    n = SPAWN_ROUNDS * SPAWN_PER_ROUND
    folders = [tmp_path / "w0", tmp_path / "w1"]
    make_images(folders[0], n, start=1000)
    make_images(folders[1], n, start=2000)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=append_rounds, args=(str(root), "shared", str(f), SPAWN_ROUNDS, SPAWN_PER_ROUND,
                                                       barrier, results)) for f in folders]
    for w in workers:
        w.start()
    done = collect(results, workers)
    added = [a for a, _ in done]
    assert added == [n, n]
    expected = {p.name for f in folders for p in f.iterdir()} | {"img000.png"}
    names = [e["source_name"] for e in store.image_entries("shared")]
    assert len(names) == len(set(names)) and set(names) == expected
    assert bank_is_whole(store, "shared")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL") or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs SIGKILL and fork (POSIX)")
def test_a_writer_killed_at_any_moment_never_leaves_a_half_bank(tmp_path):
    root = tmp_path / "store"
    store = BankStore(root)
    base = make_images(tmp_path / "base", BASE_IMAGES)
    store.create("b", base)
    base_shas = [e["sha256"] for e in store.image_entries("b")]
    extra = tmp_path / "extra"
    make_images(extra, 12, start=500)
    ctx = multiprocessing.get_context("fork")  # a fresh start per round; fork skips re-importing torch
    rng = random.Random(7)
    interrupted, seen_temps = 0, set()
    for r in range(KILL_ROUNDS):
        ready = tmp_path / f"ready-{r}"
        child = ctx.Process(target=churn_forever, args=(str(root), "b", str(extra), str(ready), r), daemon=True)
        child.start()
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        names = store.names()
        assert names in (["b"], ["b-tmp"]), names  # killed between the two renames: under the other name
        name = names[0]
        assert bank_is_whole(store, name)
        assert [e["sha256"] for e in store.image_entries(name)][:BASE_IMAGES] == base_shas
        if name != "b":
            store.rename(name, "b")
        temps = set(root.rglob(TEMP_PREFIX + "*"))
        interrupted += bool(temps - seen_temps)
        seen_temps |= temps
    print(f"{interrupted} of {KILL_ROUNDS} kills left a write half done")
    an_hour_ago = time.time() - 3600  # the dead writers' leftovers, once they are old enough
    for p in root.rglob("*"):
        os.utime(p, (an_hour_ago, an_hour_ago))
    store.gc(grace_s=0)
    assert not [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert sorted(p.name for p in (root / "banks").iterdir()) == ["b"] and bank_is_whole(store, "b")


def test_gc_waits_for_a_commit_and_restores_what_it_swept(tmp_path, monkeypatch):
    """A gc (no grace) that runs between storing an image and committing the manifest deletes the
    image; the commit, under the store lock, notices and stores it again."""
    store = BankStore(tmp_path / "store")
    store.create("b", make_images(tmp_path / "base", 1))
    real_store_images = BankStore._store_images

    def store_then_gc(self, staged):
        real_store_images(self, staged)
        assert store.gc(grace_s=0) >= 1  # the new, not yet referenced, image goes

    monkeypatch.setattr(BankStore, "_store_images", store_then_gc)
    report = store.add_images("b", make_images(tmp_path / "new", 2, start=50))
    assert report.info.n_images == 3 and bank_is_whole(store, "b")

