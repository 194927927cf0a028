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

tests/server_fidelity.rs pins both corrected behaviours: each fails on an unpatched server.

    python scripts/patch-secantus.py /path/to/site-packages/secantus/commands.py
"""

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


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        source = f.read()
    patched = patch_await(path, patch_post_image(path, source))
    if "import time as _time\n" not in patched:
        fail(path, "no 'import time as _time'")
    if patched != source:
        with open(path, "w", encoding="utf-8") as f:
            f.write(patched)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: patch-secantus.py PATH/secantus/commands.py")
    sys.exit(main(sys.argv[1]))
