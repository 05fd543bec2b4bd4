"""Writer programs the crash harnesses run as child processes (see
:mod:`tests.harness.power_cut`): each a script, each with a deliberately
broken twin that the harness must catch."""
