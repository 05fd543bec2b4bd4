"""The arguments of the transaction writers (``tx_commit.py`` and its broken twin).

``DIRECTORY SOURCE STAGING DURABILITY PLAN``, as
:func:`tests.harness.generations.tx_writer_args` builds them: PLAN is a JSON
list of ``[name, perm]`` (perm null: remove the name), and each file's
content is read from SOURCE/name here, before the start marker.
"""

import json
import os
from dataclasses import dataclass


@dataclass
class Plan:
    directory: str
    staging: str
    durability: str
    steps: list[tuple[str, int | None]]  # (name, perm), perm None: remove
    data: dict[str, bytes]  # the content of every name written


def read_plan(argv: list[str]) -> Plan:
    directory, source, staging, durability = argv[1:5]
    steps: list[tuple[str, int | None]] = json.loads(argv[5])
    data = {}
    for name, perm in steps:
        if perm is not None:
            with open(os.path.join(source, name), "rb") as f:
                data[name] = f.read()
    return Plan(directory, staging, durability, steps, data)
