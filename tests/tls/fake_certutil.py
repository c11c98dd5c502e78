"""A stand-in for NSS's `certutil`, so that tests never touch a real NSS database.

Supports what devmesh runs: `-d sql:DIR` with `-L -n NICK [-a]`, `-A -t TRUST -n NICK -i FILE` and
`-D -n NICK`. The "database" is DIR/fake-nss.json ({nickname: [PEM, ...]}); every call is appended to
$FAKE_CERTUTIL_LOG as one JSON line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    log = os.environ.get("FAKE_CERTUTIL_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(argv) + "\n")
    options: dict[str, str] = {}
    flags: set[str] = set()
    index = 0
    while index < len(argv):
        argument = argv[index]
        if argument in ("-d", "-n", "-t", "-i"):
            options[argument] = argv[index + 1]
            index += 2
        else:
            flags.add(argument)
            index += 1
    folder = Path(options["-d"].removeprefix("sql:"))
    if not folder.is_dir():
        print(f"certutil: function failed: SEC_ERROR_BAD_DATABASE: {folder}", file=sys.stderr)
        return 255
    store = folder / "fake-nss.json"
    entries: dict[str, list[str]] = json.loads(store.read_text()) if store.exists() else {}
    nickname = options.get("-n", "")
    if "-L" in flags:
        if not entries.get(nickname):
            print("certutil: Could not find cert: " + nickname, file=sys.stderr)
            return 255
        print("".join(entries[nickname]) if "-a" in flags else f"{nickname}    {options.get('-t', 'C,,')}")
        return 0
    if "-A" in flags:
        entries.setdefault(nickname, []).append(Path(options["-i"]).read_text())
    elif "-D" in flags:
        if not entries.get(nickname):
            print("certutil: could not find certificate named " + nickname, file=sys.stderr)
            return 255
        entries[nickname].pop()
        if not entries[nickname]:
            del entries[nickname]
    store.write_text(json.dumps(entries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
