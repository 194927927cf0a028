"""Corrects a known fault of SecantusDB 0.7.0b3 in an installed copy, and fails loudly if the
code it corrects is not there.

The fault: an upsert findAndModify with `new: true` that finds no matching document, and then,
inside its write, updates a document that began to match in between (a release landing between
the server's find and its write), applies the update but answers `value: null`, because the
reply carries the write's post-image only when the write inserted. MongoDB returns the document.
A lock store would then believe a grant failed that the database made. The fix returns the
write's post-image whenever the write captured one.

tests/server_fidelity.rs pins the corrected behaviour: it fails on an unpatched server.

    python scripts/patch-secantus.py /path/to/site-packages/secantus/commands.py
"""

import sys

FAULTY = '                if return_new and result["did_upsert"]:\n'
FIXED = (
    "                # actix-mongo-lock patch: an upsert whose write updated a document that began\n"
    "                # to match after the find still returns that document, as MongoDB does.\n"
    '                if return_new and result.get("post_images"):\n'
)


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        source = f.read()
    if FIXED in source:
        return 0
    if source.count(FAULTY) != 1:
        sys.exit(
            f"patch-secantus: expected exactly one line {FAULTY.strip()!r} in {path}; "
            "the pinned SecantusDB changed, so the patch must be reviewed"
        )
    with open(path, "w", encoding="utf-8") as f:
        f.write(source.replace(FAULTY, FIXED))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: patch-secantus.py PATH/secantus/commands.py")
    sys.exit(main(sys.argv[1]))
