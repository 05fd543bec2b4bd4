"""Makes requests, forks, and has the child use the same endpoint: ``s3_fork.py URL``.

The parent writes ``{"n": 1}`` at URL and updates it (its client now holds pooled
connections), then forks. The child writes ``URL-child`` create-only, adds one to URL's
``n`` and exits 0 (1 on any error, printed). The parent waits for it, adds one more, and
reports the child's exit status and the document it then reads, as one JSON line. Run it
under ``timeout``: a child that reused its parent's sockets could hang.
"""

import json
import os
import sys
import traceback

import crashsafe

url = sys.argv[1]
crashsafe.write_json(url, {"n": 0})
crashsafe.update_json(url, lambda d: {"n": d["n"] + 1})
pid = os.fork()
if pid == 0:
    code = 0
    try:
        crashsafe.atomic_write(url + "-child", b"from the child", overwrite=False)
        crashsafe.update_json(url, lambda d: {"n": d["n"] + 1})
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stderr.flush()
    os._exit(code)
_, status = os.waitpid(pid, 0)
crashsafe.update_json(url, lambda d: {"n": d["n"] + 1})
result = {"child": os.waitstatus_to_exitcode(status), "parent_after": crashsafe.read_json(url)}
sys.stdout.write(json.dumps(result) + "\n")
