#!/usr/bin/env bash
# Vendored unchanged from the team's shared tools (../shared/tools/autobahn.sh) so
# that a clean clone runs the conformance tests on its own.
# autobahn.sh - run the Autobahn|Testsuite "fuzzingclient" (RFC 6455 conformance, 517 cases)
# against a WebSocket server, under Python 3.
#
#   usage: autobahn.sh WS_URL OUTDIR        e.g. autobahn.sh ws://127.0.0.1:9001/ /tmp/ab-report
#
# The PyPI package autobahntestsuite (25.10.1) is Python 2 code written for autobahn 0.10.9.
# This script installs both from PyPI into a private venv and ports them to Python 3 in place
# (fissix = 2to3, plus a few targeted edits: see the embedded patch), then runs the cases.
#
# Environment:
#   AUTOBAHN_SKIP_SLOW=1   exclude the slow cases 9.* (limits/performance) and 12.*/13.* (permessage-deflate)
#   AUTOBAHN_CASES         comma-separated case patterns to run (default "*"), e.g. "1.*,2.*,7.7.*"
#   AUTOBAHN_EXCLUDE       comma-separated case patterns to exclude as well, e.g. "12.*,13.*"
#   AUTOBAHN_AGENT         name of the server in the report (default "server")
#   AUTOBAHN_VENV          venv location (default ${XDG_CACHE_HOME:-$HOME/.cache}/autobahn-testsuite-py3)
#   AUTOBAHN_PYTHON        interpreter for the venv, 3.11-3.13 (default: first of python3.11 python3.12 python3.13 python3)
#   AUTOBAHN_WAIT          seconds to wait for the server's TCP port to accept connections (default 30)
#   AUTOBAHN_TIMEOUT       time limit for the wstest run in seconds (default 7200)
#   AUTOBAHN_VERBOSE=1     also stream wstest's output to stderr (it always goes to OUTDIR/wstest.log)
#
# Output: OUTDIR/index.html and index.json (plus an .html and a .json per case), OUTDIR/spec.json,
# OUTDIR/wstest.log, OUTDIR/summary.txt. The last line printed is the summary, e.g.
#   autobahn ws://127.0.0.1:9001/: 517 cases in 619s: OK=510 NON-STRICT=4 INFORMATIONAL=3 UNIMPLEMENTED=0 FAILED=0 (report: ...)
# Exit status: 0 = no case FAILED or missing; 1 = some case FAILED or did not run; 2 = usage/setup/run error.
set -euo pipefail

PORT_VERSION="py3port-3"   # bump whenever the patch below changes: forces a fresh venv

die() { echo "autobahn.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

[ $# -eq 2 ] || usage
URL=$1
OUTDIR=$2
case "$URL" in ws://*|wss://*) ;; *) die "not a ws:// or wss:// URL: $URL" ;; esac
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
VENV=${AUTOBAHN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/autobahn-testsuite-py3}
VPY="$VENV/bin/python"

# ---------------------------------------------------------------------------------------------
# 1. venv + packages, by name from PyPI (once; reused while $VENV/.autobahn-py3port matches)
# ---------------------------------------------------------------------------------------------
pick_python() {
  if [ -n "${AUTOBAHN_PYTHON:-}" ]; then echo "$AUTOBAHN_PYTHON"; return; fi
  local c
  for c in python3.11 python3.12 python3.13 python3; do
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys, venv, ensurepip; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; then
      echo "$c"; return
    fi
  done
  die "need Python 3.11-3.13 with the venv module (Debian: apt-get install python3-venv)"
}

if [ "$(cat "$VENV/.autobahn-py3port" 2>/dev/null || true)" != "$PORT_VERSION" ]; then
  PY=$(pick_python)
  echo "autobahn.sh: setting up $VENV with $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')" >&2
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY" -m venv "$VENV" || die "venv creation failed (Debian: apt-get install python3-venv)"
  PIP=("$VPY" -m pip install -q --disable-pip-version-check)
  "${PIP[@]}" --upgrade pip >&2 || die "pip upgrade failed"
  # autobahntestsuite is pinned because the patch edits its exact source text; autobahn 0.10.9 is
  # the version the testsuite is written for (upstream's requirements pin it, too). The rest are the
  # versions this was validated with (txaio 26.x needs Python >= 3.11).
  "${PIP[@]}" "autobahntestsuite==25.10.1" "autobahn[twisted]==0.10.9" "Twisted[tls]==26.10.0" \
      "txaio==26.6.1" "six==1.17.0" "jinja2==3.1.6" "fissix==24.4.24" "setuptools<81" >&2 \
    || die "pip install failed"   # setuptools<81: the testsuite imports pkg_resources
  # C masker/UTF-8 validator; optional (the pure-Python fallback is much slower on 9.*)
  "${PIP[@]}" "wsaccel==0.6.7" >&2 || echo "autobahn.sh: no wsaccel; using pure-Python masking" >&2

  # -------------------------------------------------------------------------------------------
  # 2. port autobahntestsuite 25.10.1 + autobahn 0.10.9 to Python 3, in place in the venv
  # -------------------------------------------------------------------------------------------
  "$VPY" - <<'PYPATCH' || die "patching failed"
# Convention of the port: a Python 2 byte-string literal becomes a Python 3 str whose code points
# are the byte values (latin-1). Whatever reaches the wire, or is compared with what was received,
# goes through _b() (latin-1 encode), so the octets sent are exactly those of the Python 2 original.
import importlib.util, io, os, re, subprocess, sys, tokenize

ATS = os.path.dirname(importlib.util.find_spec("autobahntestsuite").origin)  # not importable yet
AB = os.path.dirname(importlib.util.find_spec("autobahn").origin)
casedir = os.path.join(ATS, "case")


def rd(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def wr(path, s):
    with open(path, "w", encoding="utf-8") as f:
        f.write(s)


def sub(relpath, old, new, count=1, base=None, regex=False):
    """Replace exactly `count` occurrences (count=0: one or more), or fail loudly."""
    path = os.path.join(base or ATS, relpath)
    s = rd(path)
    n = len(re.findall(old, s, flags=re.M)) if regex else s.count(old)
    if n == 0 or (count and n != count):
        sys.exit("patch failed: %r found %d times in %s" % (old, n, path))
    wr(path, re.sub(old, new, s, flags=re.M) if regex else s.replace(old, new))


# -- 1. helper module (new file) --
wr(os.path.join(ATS, "py3compat.py"), '''\
"""Helpers for the Python 3 port of autobahntestsuite (added by autobahn.sh)."""
import binascii

def _b(x):
    """py2 byte string (a latin-1 coded str) -> bytes; bytes and None pass through."""
    if isinstance(x, str):
        try:
            return x.encode("latin-1")
        except UnicodeEncodeError:
            return x.encode("utf-8")
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    return x

def _norm(o):
    """Normalize expected/received event lists for comparison (str payloads -> bytes)."""
    if isinstance(o, (str, bytearray, memoryview)):
        return _b(o)
    if isinstance(o, list):
        return [_norm(x) for x in o]
    if isinstance(o, tuple):
        return tuple(_norm(x) for x in o)
    return o

def _hex(x):
    return binascii.b2a_hex(_b(x)).decode("ascii")

def _text(x):
    """For reports/JSON: bytes -> UTF-8 text; latin-1 coded UTF-8 str -> text."""
    if isinstance(x, (bytes, bytearray)):
        return bytes(x).decode("utf-8", "replace")
    if isinstance(x, str):
        try:
            return x.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return x
    return x
''')

# -- 2. raw non-ASCII characters in string literals (6.2.x): py2 used their UTF-8 bytes --
for fn in sorted(os.listdir(casedir)):
    path = os.path.join(casedir, fn)
    if not fn.endswith(".py") or rd(path).isascii():
        continue
    src = rd(path)
    lines = src.splitlines(keepends=True)
    for t in reversed(list(tokenize.generate_tokens(io.StringIO(src).readline))):
        if t.type == tokenize.STRING and not t.string.isascii():
            assert t.start[0] == t.end[0], (fn, t)
            esc = "".join(c if c.isascii() else "".join("\\x%02x" % b for b in c.encode("utf-8"))
                          for c in t.string)
            ln = t.start[0] - 1
            lines[ln] = lines[ln][:t.start[1]] + esc + lines[ln][t.end[1]:]
    wr(path, "".join(lines))

# -- 3. generic 2to3 pass: print, except, has_key, relative imports, dict views, unicode, ... --
subprocess.check_call([sys.executable, "-m", "fissix", "-w", "-n", "-j", "2", ATS],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

# -- 4. targeted fixes --
IMPORT = "from autobahntestsuite.py3compat import _b, _norm, _hex, _text\n"


def add_import(relpath):
    path = os.path.join(ATS, relpath)
    s = rd(path)
    if IMPORT not in s:
        m = re.search(r"^(import|from) ", s, flags=re.M)
        wr(path, s[:m.start()] + IMPORT + s[m.start():])


# binascii.b2a_hex() of py2 str (case descriptions, wire log) -> _hex(): takes str/bytes, gives str
for rel in [os.path.join("case", f) for f in sorted(os.listdir(casedir))] + ["fuzzing.py"]:
    if rel.endswith(".py") and "binascii.b2a_hex(" in rd(os.path.join(ATS, rel)):
        sub(rel, "binascii.b2a_hex(", "_hex(", count=0)
        add_import(rel)
    # type(name, (object, Case), ...) was fine for py2 old-style classes; MRO error on py3
    if rel.endswith(".py") and "(object, Case, )" in rd(os.path.join(ATS, rel)):
        sub(rel, "(object, Case, )", "(Case, )", count=0)

# the UTF-8 validator takes bytes
sub("case/case6_x_x.py", "res = v.validate(vss[:i])", "res = v.validate(_b(vss[:i]))")
add_import("case/case6_x_x.py")

# verdict: expected vs received events were compared by pickle (str vs bytes on py3) -> normalize
sub("case/case.py", "return pickle.dumps(obj1) == pickle.dumps(obj2)", "return _norm(obj1) == _norm(obj2)")
add_import("case/case.py")

# integer division (10.1.1 compares an expected frame count)
sub("case/case10_1_1.py", "len(self.payload) / self.p.autoFragmentSize",
    "len(self.payload) // self.p.autoFragmentSize")
sub("util.py", "c1 = l / 2", "c1 = l // 2")

# zope class advice is py2-only (case 9.9.1 is disabled upstream, but imported)
sub("case/case9_9_1.py", "from zope.interface import implements", "from zope.interface import implementer")
sub("case/case9_9_1.py", r"^class FrameProducer:\n\s+implements\(interfaces\.IPushProducer\)\n",
    "@implementer(interfaces.IPushProducer)\nclass FrameProducer:\n", regex=True)

# fuzzing.py: payload conversion at the wire boundary, wire log, JSON/HTML report writing
F = "fuzzing.py"
sub(F, '''   MAX_WIRE_LOG_DATA = 256
''', '''   MAX_WIRE_LOG_DATA = 256

   ## py3 port: the cases pass py2 byte strings (latin-1 coded str); send their exact octets
   def sendFrame(self, opcode, payload=b'', *args, **kwargs):
      return super().sendFrame(opcode, _b(payload), *args, **kwargs)

   def sendMessage(self, payload, *args, **kwargs):
      return super().sendMessage(_b(payload), *args, **kwargs)

   def sendMessageFrame(self, payload, *args, **kwargs):
      return super().sendMessageFrame(_b(payload), *args, **kwargs)

   def sendMessageFrameData(self, payload, *args, **kwargs):
      return super().sendMessageFrameData(_b(payload), *args, **kwargs)

   def sendCloseFrame(self, code=None, reasonUtf8=None, isReply=False):
      return super().sendCloseFrame(code, _b(reasonUtf8), isReply)
''')
sub(F, '''   ellipses = " ..."
   try:''', '''   ellipses = b" ..."
   data = _b(data)
   try:''')
sub(F, "p = ''.join(payload)", "p = b''.join(payload)")
# py2's UTF-8 codec let encoded surrogates through (6.20/6.21 payloads): keep showing them as text
sub(F, "errors = 'replace' if replace else 'strict'", "errors = 'replace' if replace else 'surrogatepass'")
sub(F, '"description": self.Case.DESCRIPTION,', '"description": _text(self.Case.DESCRIPTION),')
sub(F, '"localCloseReason": self.localCloseReason,', '"localCloseReason": _text(self.localCloseReason),')
sub(F, '"remoteCloseReason": self.remoteCloseReason,', '"remoteCloseReason": _text(self.remoteCloseReason),')
sub(F, "self.http_request_data if hasattr", "_text(self.http_request_data) if hasattr")
sub(F, "self.http_response_data if hasattr", "_text(self.http_response_data) if hasattr")
sub(F, "% CCase.DESCRIPTION)", "% _text(CCase.DESCRIPTION))")
sub(F, "ll.encode('utf8')))", "ll))")
sub(F, "% (c[0], case[c[0]], c[1])).encode(\"utf-8\"))", "% (c[0], case[c[0]], c[1])))")
sub(F, "report_filename), 'w')", "report_filename), 'w', encoding='utf-8', errors='backslashreplace')",
    count=0)

# autobahn 0.10.9: repeated-payload frames (payload_len=..., used by 9.x and others) divide with /
sub("websocket/protocol.py", "range(payload_len / len(payload))", "range(payload_len // len(payload))", base=AB)
# ... and decodes a received close reason after flagging invalid UTF-8; py2 accepted surrogates there
sub("websocket/protocol.py", "self.remoteCloseReason = reasonRaw.decode('utf8')",
    "self.remoteCloseReason = reasonRaw.decode('utf8', 'surrogatepass')", base=AB)
# autobahn 0.10.9 relied on old txaio picking Twisted by itself; current txaio must be told
with open(os.path.join(AB, "twisted", "__init__.py"), "a") as f:
    f.write("\nimport txaio\ntxaio.use_twisted()  # added by autobahn.sh\n")
# wstest imports its 'serializer' mode, which imports autobahn's tests, which import unittest2
sub("wamp/test/test_serializer.py", "import unittest2 as unittest", "import unittest", base=AB)
# byte-compile the edited sources once (quietly: py2-era regex literals warn on Python >= 3.12)
import compileall, warnings
warnings.simplefilter("ignore")
for d in (ATS, AB):
    compileall.compile_dir(d, quiet=2, force=True)
print("autobahn.sh: ported", ATS, "to Python 3", file=sys.stderr)
PYPATCH
  PYTHONWARNINGS=ignore "$VENV/bin/wstest" -a >&2 || die "wstest does not start after patching"
  echo "$PORT_VERSION" > "$VENV/.autobahn-py3port"
fi

# ---------------------------------------------------------------------------------------------
# 3. spec, wait for the server, run
# ---------------------------------------------------------------------------------------------
export URL OUTDIR
export AGENT=${AUTOBAHN_AGENT:-server}
export CASES=${AUTOBAHN_CASES:-*}
EXCLUDE=${AUTOBAHN_EXCLUDE:-}
if [ "${AUTOBAHN_SKIP_SLOW:-0}" != 0 ]; then EXCLUDE="${EXCLUDE:+$EXCLUDE,}9.*,12.*,13.*"; fi
export EXCLUDE
rm -f "$OUTDIR"/index.json "$OUTDIR"/index.html "$OUTDIR"/*_case_*.json "$OUTDIR"/*_case_*.html

"$VPY" - <<'PYSPEC' || die "bad arguments"
import json, os
split = lambda v: [p.strip() for p in v.split(",") if p.strip()]
spec = {"outdir": os.environ["OUTDIR"],
        "servers": [{"agent": os.environ["AGENT"], "url": os.environ["URL"]}],
        "cases": split(os.environ["CASES"]),
        "exclude-cases": split(os.environ["EXCLUDE"]),
        "exclude-agent-cases": {}}
with open(os.path.join(os.environ["OUTDIR"], "spec.json"), "w") as f:
    json.dump(spec, f, indent=2)
PYSPEC

AUTOBAHN_WAIT=${AUTOBAHN_WAIT:-30} "$VPY" - <<'PYWAIT' || die "nothing accepts connections at $URL"
import os, socket, sys, time
from urllib.parse import urlsplit
u = urlsplit(os.environ["URL"])
port = u.port or (443 if u.scheme == "wss" else 80)
deadline = time.time() + float(os.environ["AUTOBAHN_WAIT"])
while True:
    try:
        socket.create_connection((u.hostname, port), timeout=2).close()
        break
    except OSError:
        if time.time() > deadline:
            sys.exit(1)
        time.sleep(0.2)
PYWAIT

START=$(date +%s)
set +e
(
  cd "$OUTDIR"
  if [ "${AUTOBAHN_VERBOSE:-0}" != 0 ]; then
    PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore timeout "${AUTOBAHN_TIMEOUT:-7200}" "$VENV/bin/wstest" -m fuzzingclient -s spec.json 2>&1 | tee wstest.log >&2
    exit "${PIPESTATUS[0]}"
  else
    PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore exec timeout "${AUTOBAHN_TIMEOUT:-7200}" "$VENV/bin/wstest" -m fuzzingclient -s spec.json > wstest.log 2>&1
  fi
)
RC=$?
set -e
export ELAPSED=$(( $(date +%s) - START ))
[ $RC -eq 124 ] && die "wstest ran past AUTOBAHN_TIMEOUT=${AUTOBAHN_TIMEOUT:-7200}s (no report is written then); see $OUTDIR/wstest.log"
[ $RC -eq 0 ] && [ -f "$OUTDIR/index.json" ] || die "wstest failed (exit $RC); see $OUTDIR/wstest.log"

# ---------------------------------------------------------------------------------------------
# 4. summary (counts by the case's "behavior", as in the report's main column)
# ---------------------------------------------------------------------------------------------
"$VPY" - <<'PYSUM'
import json, os, re, sys
out = os.environ["OUTDIR"]
res = json.load(open(os.path.join(out, "index.json"))).get(os.environ["AGENT"], {})
planned = []
for line in open(os.path.join(out, "wstest.log"), encoding="utf-8", errors="replace"):
    if line.startswith("Cases = "):
        planned = re.findall(r"'([\d.]+)'", line)
        break
key = lambda c: tuple(int(x) for x in c.split("."))
cnt = {k: 0 for k in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")}
failed, close_bad = [], []
for cid, r in res.items():
    b = r["behavior"] if r["behavior"] in cnt else "FAILED"
    cnt[b] += 1
    if b == "FAILED":
        failed.append(cid)
    elif b != "UNIMPLEMENTED" and r["behaviorClose"] not in ("OK", "INFORMATIONAL"):
        close_bad.append(cid)  # events as expected, but the closing handshake was not
missing = sorted(set(planned) - set(res), key=key)
if failed:
    print("FAILED cases: " + " ".join(sorted(failed, key=key)))
if close_bad:
    print("cases passed, but with a closing behavior that is not OK: " + " ".join(sorted(close_bad, key=key)))
if missing:
    print("cases that did not run: " + " ".join(missing))
line = "autobahn %s: %d cases in %ss: %s%s%s (report: %s/index.html)" % (
    os.environ["URL"], len(res), os.environ["ELAPSED"],
    " ".join("%s=%d" % kv for kv in cnt.items()),
    " MISSING=%d" % len(missing) if missing else "",
    " CLOSE-NOT-OK=%d" % len(close_bad) if close_bad else "", out)
open(os.path.join(out, "summary.txt"), "w").write(line + "\n")
print(line)
sys.exit(1 if failed or missing else 0)
PYSUM
