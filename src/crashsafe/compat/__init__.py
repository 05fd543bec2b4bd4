"""Drop-in replacements for other libraries' atomic-write APIs, on crashsafe's protocol.

:mod:`crashsafe.compat.atomicwrites` offers atomicwrites 1.4's public API
(``atomic_write``, ``AtomicWriter``, ``replace_atomic``, ``move_atomic``):
change the import line, keep the calls. ``docs/migration.md`` says what
changes with it, and how to move from safer, boltons, click and
jupyter_server.
"""
