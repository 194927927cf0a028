"""Corrects two known faults of SecantusDB 0.7.0b3 in an installed copy, and fails loudly if
the code it corrects is not there.

1. An upsert findAndModify with `new: true` that finds no matching document, and then, inside
   its write, updates a document that began to match in between (a release landing between the
   server's find and its write), applies the update but answers `value: null`, because the
   reply carries the write's post-image only when the write inserted. MongoDB returns the
   document. A lock store would then believe a grant failed that the database made. The fix
   returns the write's post-image whenever the write captured one.

2. A change stream's getMore that has nothing to return waits for the next write to the oplog
   of ANY kind, runs its pipeline over it once, and answers, with an empty batch when the write
   did not pass the pipeline's filter. MongoDB keeps scanning the oplog until an event passes
   the filter or `maxAwaitTimeMS` runs out (the change streams specification: "the server
   scans the oplog for the duration of maxAwaitTimeMS but finds no matching entries and returns
   an empty response"). So on SecantusDB every write to a collection costs one getMore of every
   open stream on it, however narrow its filter: a fleet of W waiting lock managers, each
   filtered down to the events meant for it, would still send W requests per write. The fix
   waits again, until its deadline, while the batch is empty.

3. (transactions.py) Every retryable write (the driver makes every write retryable on a replica
   set) records its reply, and each record and each look-up first walks all the records kept
   (up to 10,000, for 30 minutes) and, once there are 10,000, sorts them all to drop the oldest:
   O(n log n) under one lock on every write. After 10,000 writes a findAndModify takes ~10-14 ms
   instead of 0.7 ms, and every write of every client waits in line for it, so a test suite that
   runs long slows five-fold in its later tests (measured: a 600-operation simulation took 3.5 s
   on a fresh server and 19-23 s at the end of the suite; a client's `request_timeout` of a few
   seconds then ran out). MongoDB keeps such records per session, at no cost to other writes.
   The fix prunes at most once a second, and when over the cap trims to nine tenths of it, so
   the sort runs once per thousand writes; what is kept and for how long is unchanged.

tests/server_fidelity.rs pins the first two corrected behaviours: each fails on an unpatched
server. The third changes no answer, only the time each write takes.

    python scripts/patch-secantus.py /path/to/site-packages/secantus/commands.py
"""

import os

import sys

FAULTY_POST_IMAGE = '                if return_new and result["did_upsert"]:\n'
FIXED_POST_IMAGE = (
    "                # actix-mongo-lock patch: an upsert whose write updated a document that began\n"
    "                # to match after the find still returns that document, as MongoDB does.\n"
    '                if return_new and result.get("post_images"):\n'
)

AWAIT_MARK = "        # actix-mongo-lock patch: a change stream's getMore waits until an event passes\n"
AWAIT_START = "        baseline_seq = entry.position_seq if entry.change_stream else pre_drain_tail_seq\n"
AWAIT_END = "    return {\n"
AWAIT_TIMEOUT = "                timeout=wait_seconds,\n"
AWAIT_HEADER = [
    AWAIT_MARK,
    "        # its pipeline or maxAwaitTimeMS runs out, as mongod does; it answered after the first\n",
    "        # oplog write of any kind, with an empty batch when that write did not pass the filter.\n",
    "        _await_deadline = _time.monotonic() + wait_seconds\n",
    "        while True:\n",
]
AWAIT_FOOTER = [
    "            if (\n",
    "                entry.remaining\n",
    "                or not entry.change_stream\n",
    "                or entry.invalidated\n",
    "                or ctx.storage._shutting_down\n",
    "                or _time.monotonic() >= _await_deadline\n",
    "            ):\n",
    "                break\n",
]


def fail(path: str, what: str) -> None:
    sys.exit(
        f"patch-secantus: {what} in {path}; the pinned SecantusDB changed, so the patch must be "
        "reviewed"
    )


def patch_post_image(path: str, source: str) -> str:
    if FIXED_POST_IMAGE in source:
        return source
    if source.count(FAULTY_POST_IMAGE) != 1:
        fail(path, f"expected exactly one line {FAULTY_POST_IMAGE.strip()!r}")
    return source.replace(FAULTY_POST_IMAGE, FIXED_POST_IMAGE)


def patch_await(path: str, source: str) -> str:
    if AWAIT_MARK in source:
        return source
    lines = source.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line == AWAIT_START]
    if len(starts) != 1:
        fail(path, f"expected exactly one line {AWAIT_START.strip()!r}")
    start = starts[0]
    end = next((i for i in range(start, len(lines)) if lines[i] == AWAIT_END), None)
    if end is None:
        fail(path, "no reply after the getMore's wait")
    block = lines[start:end]
    text = "".join(block)
    if (
        text.count("_oplog_cv.wait_for(") != 1
        or text.count("_drain_change_stream_producer(entry)") != 1
        or block.count(AWAIT_TIMEOUT) != 1
    ):
        fail(path, "the getMore's wait is not one wait and one drain")
    timeout = "                timeout=max(0.0, _await_deadline - _time.monotonic()),\n"
    body = [timeout if line == AWAIT_TIMEOUT else line for line in block]
    body = [("    " + line) if line.strip() else line for line in body]
    return "".join(lines[:start] + AWAIT_HEADER + body + AWAIT_FOOTER + lines[end:])


PRUNE_MARK = "        # actix-mongo-lock patch: prune at most once a second, and trim to nine tenths\n"
PRUNE_FAULTY = """        now = self._time()
        cutoff = now - _RETRYABLE_RECORD_LIFETIME_SECONDS
        stale = [k for k, (_r, at, _i) in self._retryable.items() if at < cutoff]
        for k in stale:
            self._retryable.pop(k, None)
        excess = len(self._retryable) - _RETRYABLE_RECORD_MAX
"""
PRUNE_FIXED = (
    PRUNE_MARK
    + """        # of the cap when over it: walking and sorting every record on every write made each
        # write O(n log n) under the registry's lock once 10,000 records were kept.
        now = self._time()
        if (
            len(self._retryable) <= _RETRYABLE_RECORD_MAX
            and now - getattr(self, "_amlock_last_prune", float("-inf")) < 1.0
        ):
            return
        self._amlock_last_prune = now
        cutoff = now - _RETRYABLE_RECORD_LIFETIME_SECONDS
        stale = [k for k, (_r, at, _i) in self._retryable.items() if at < cutoff]
        for k in stale:
            self._retryable.pop(k, None)
        excess = len(self._retryable) - _RETRYABLE_RECORD_MAX * 9 // 10
        if len(self._retryable) <= _RETRYABLE_RECORD_MAX:
            excess = 0
"""
)


def patch_prune(path: str, source: str) -> str:
    if PRUNE_MARK in source:
        return source
    if source.count(PRUNE_FAULTY) != 1:
        fail(path, "expected the retryable-record prune walking every record on every write")
    return source.replace(PRUNE_FAULTY, PRUNE_FIXED)


def rewrite(path: str, patch) -> None:
    with open(path, encoding="utf-8") as f:
        source = f.read()
    patched = patch(source)
    if patched != source:
        with open(path, "w", encoding="utf-8") as f:
            f.write(patched)


def patch_commands(path: str, source: str) -> str:
    patched = patch_await(path, patch_post_image(path, source))
    if "import time as _time\n" not in patched:
        fail(path, "no 'import time as _time'")
    return patched


def main(path: str) -> int:
    rewrite(path, lambda source: patch_commands(path, source))
    transactions = os.path.join(os.path.dirname(path), "transactions.py")
    rewrite(transactions, lambda source: patch_prune(transactions, source))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: patch-secantus.py PATH/secantus/commands.py")
    sys.exit(main(sys.argv[1]))
