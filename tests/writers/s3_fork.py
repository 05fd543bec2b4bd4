"""Makes requests, forks, and has parent and child use the same endpoint at once:
``s3_fork.py URL``.

The parent writes ``{"n": 0}`` at URL and ``{"who": "parent"}`` / ``{"who": "child"}``
at ``URL-parent`` / ``URL-child``, and reads them (its clients now hold pooled
connections), then forks. Both then read their own document ROUNDS times at the same
time: a child that reused its parent's pooled socket would send on the very connection
the parent sends on, and one would read the other's answer (a wrong document, a broken
response or a hang). The child then writes ``URL-created`` create-only, adds one to URL's
``n`` and exits 0 (1 on any error, printed). The parent waits for it, adds one more, and
reports the child's exit status and the document it then reads, as one JSON line. Run it
under ``timeout``: a hang must become a failure.
"""

import json
import os
import sys
import traceback

import crashsafe

ROUNDS = 40

url = sys.argv[1]
crashsafe.write_json(url, {"n": 0})
for who in ("parent", "child"):
    crashsafe.write_json(f"{url}-{who}", {"who": who})
    assert crashsafe.read_json(f"{url}-{who}") == {"who": who}
crashsafe.update_json(url, lambda d: {"n": d["n"] + 1})


def read_own(who: str) -> None:
    for _ in range(ROUNDS):
        got = crashsafe.read_json(f"{url}-{who}")
        if got != {"who": who}:
            raise AssertionError(f"the {who} read {got}: another process's answer")


pid = os.fork()
if pid == 0:
    code = 0
    try:
        read_own("child")
        crashsafe.atomic_write(url + "-created", b"from the child", overwrite=False)
        crashsafe.update_json(url, lambda d: {"n": d["n"] + 1})
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code)
read_own("parent")
_, status = os.waitpid(pid, 0)
crashsafe.update_json(url, lambda d: {"n": d["n"] + 1})
result = {"child": os.waitstatus_to_exitcode(status), "parent_after": crashsafe.read_json(url)}
sys.stdout.write(json.dumps(result) + "\n")
