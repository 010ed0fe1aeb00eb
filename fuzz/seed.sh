#!/usr/bin/env bash
# Seed the cargo-fuzz corpora from the real torch fixtures and the hostile corpus.
#   fuzz/corpus/archive, fuzz/corpus/open_describe: whole files
#   fuzz/corpus/pickle: every *.pkl record of the zip files, plus whole non-zip files
# Usage: bash fuzz/seed.sh   (from anywhere; needs python3 for unpacking the zips)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
mkdir -p "$here/corpus/archive" "$here/corpus/open_describe" "$here/corpus/pickle"
python3 - "$root" "$here/corpus" <<'PY'
import hashlib, os, sys, zipfile
root, out = sys.argv[1], sys.argv[2]
srcs = [os.path.join(root, "tests", "fixtures"), os.path.join(root, "tests", "hostile", "corpus")]
def put(target, data):
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)
n = {"archive": 0, "open_describe": 0, "pickle": 0}
for d in srcs:
    if not os.path.isdir(d):
        continue
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".json") or fn.endswith(".md"):
            continue
        data = open(os.path.join(d, fn), "rb").read()
        if len(data) > 1 << 20:
            continue
        for t in ("archive", "open_describe"):
            put(t, data); n[t] += 1
        try:
            z = zipfile.ZipFile(os.path.join(d, fn))
            for info in z.infolist():
                if info.filename.endswith(".pkl") and info.file_size <= 1 << 20:
                    try:
                        put("pickle", z.read(info)); n["pickle"] += 1
                    except Exception:
                        pass
        except Exception:
            put("pickle", data); n["pickle"] += 1
print("seeded", n)
PY
