"""The filesystem matrix: which tests run on each filesystem, which filesystems run,
and the one table of known library gaps.

A test in one of :data:`MODULES` that takes the ``workdir`` fixture runs once per
selected filesystem (``--fs``), in a fresh directory of a mount made once per
session (tests/conftest.py). Tests that bring their own setup (a loop filesystem
they remount read-only, a directory user nobody may not write) do not take
``workdir`` and run once, as before.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass

import pytest

from tests.harness.capabilities import Capability
from tests.harness.filesystems import NAMES
from tests.harness.require import IN_CI

# The modules of the contract (see the README's "Development"), and why each:
MODULES = frozenset(
    {
        "test_api.py",  # atomicity: all or nothing, the old file until commit, no debris
        "test_modes.py",  # replace, create-only and append; commit and discard
        "test_permissions.py",  # exact modes, umask, never more permissive while staged
        "test_symlinks.py",  # through a symlink, planted symlinks never followed
        "test_errors.py",  # errors name the path, nothing lost, nothing left behind
        "test_concurrency.py",  # many writers of one name, create-only races
        "test_sweep.py",  # orphans found and removed, live ones left alone
        "test_copy.py",  # atomic_copy: every method, metadata, source changes
        "test_documents.py",  # read-modify-write state: update_json and its lock
        "test_transaction.py",  # multi-file state: commit, recovery, snapshots
        "test_batch.py",  # write_many
        "test_atomic_path.py",  # a path for libraries that only take a path
        "test_planted_names.py",  # names an attacker or a crash left in the directory
        "test_filesystems.py",  # kill -9 after each syscall, on each filesystem
    }
)

# Off the matrix although in MODULES: long runs whose cost times 15 filesystems
# would break the suite's budget; they run once, in pytest's temporary directory.
# "module::test" (fnmatch) -> why.
SINGLE = {
    "test_transaction.py::test_a_commit_killed_after_any_syscall_recovers_to_old_or_new": (
        "100+ kills of a child at every syscall, 38 s"
    ),
    "test_errors.py::test_a_signal_at_any_moment_of_a_write_never_leaves_signals_blocked": (
        "thousands of signals, 19 s"
    ),
    "test_documents.py::test_8_processes_x_4_threads_x_50_increments_lose_nothing": (
        "6,400 locked increments, 7 s"
    ),
    "test_atomic_path.py::test_kill9_*": "100 kills of SQLite backups and the control, 18 s",
    # The control of the one above (two threads meeting at a barrier): 1 s on tmpfs, 62 s
    # on exFAT.
    "test_documents.py::test_control_the_same_increments_without_the_lock_lose_updates": (
        "the control of the 8-process increments"
    ),
}

# What a test is about that a filesystem may lack: on a filesystem without it, the test
# does not apply (capabilities.needs: skipped with the probe's reason, under CI too).
# capability -> "module::test" (every parametrization) or "module::test[glob]".
REQUIRES: dict[Capability, tuple[str, ...]] = {
    # Exact modes, umask, "never more permissive", modes kept on replace: ntfs-3g and
    # exFAT show 0777 whatever was set (issue 18: the library is to detect this).
    "chmod": (
        "test_api.py::test_write_file_atomic_gives_exactly_the_data_and_perm",
        # write_file_atomic takes an explicit perm (0o600 here): refused where it does not
        # hold (issue 18: UnsupportedByFilesystemError).
        "test_api.py::test_paths_may_be_str_or_path_like",
        "test_api.py::test_write_file_atomic_takes_path_like_and_bytes_as_paths_are",
        "test_errors.py::test_write_file_atomic_replaces_a_cross_filesystem_link_itself",
        "test_errors.py::test_*[*-write_file_atomic*]",
        "test_atomic_path.py::test_a_library_that_renames_its_own_file_onto_the_staged_path",
        "test_atomic_path.py::test_a_new_file_gets_the_mode_open_would_give",
        "test_atomic_path.py::test_an_existing_targets_owner_and_setgid_mode_are_kept",
        "test_atomic_path.py::test_perm_is_exact_whatever_the_umask_and_the_library",
        "test_atomic_path.py::test_sqlite_backup_into_the_staged_path_replaces_the_database",
        "test_atomic_path.py::test_the_staged_path_is_private_new_and_ends_with_the_targets_suffixes",
        "test_batch.py::test_permission_rules_are_atomic_writes",
        "test_copy.py::test_copy_uses_the_fastest_method_and_is_byte_exact",
        "test_copy.py::test_file_object_source_gives_a_new_dst_the_default_mode",
        "test_copy.py::test_new_dst_takes_the_source_permission_bits_exactly",
        "test_copy.py::test_perm_overrides_and_existing_dst_keeps_mode_and_owner",
        "test_copy.py::test_pipe_is_copied_from_its_position_with_unknown_total",
        "test_copy.py::test_refused_fast_paths_fall_back_at_the_same_offset",
        "test_copy.py::test_setuid_setgid_and_sticky_are_not_copied",
        "test_copy.py::test_symlink_dst_is_followed_or_replaced",
        "test_copy.py::test_symlink_source_is_followed",
        "test_copy.py::test_validate_on_writers_sees_exactly_what_was_written",
        "test_documents.py::test_update_json_reads_changes_and_writes_the_document",
        "test_documents.py::test_update_passes_the_write_keywords_on",
        "test_documents.py::test_write_json_follows_the_permission_rules",
        "test_errors.py::test_failed_commit_is_final_and_the_next_write_succeeds",
        # An fchmod to fail: none is made where the target shows 0777 whatever was set.
        "test_errors.py::test_injected_error_before_rename_leaves_target_and_no_temp[*-fchmod-eio]",
        "test_modes.py::test_exception_in_block_leaves_target_unchanged",
        "test_permissions.py::*",
        "test_planted_names.py::test_staged_temp_file_is_hidden_shaped_and_no_more_permissive_than_final",
        "test_planted_names.py::test_write_to_a_255_byte_name_succeeds",
        "test_sweep.py::test_sweep_never_removes_a_live_writers_temp_file",
        "test_symlinks.py::test_append_through_a_link_appends_to_its_target",
        "test_symlinks.py::test_follow_a_chain_of_links_replaces_the_last_file",
        "test_symlinks.py::test_follow_link_into_another_directory_replaces_the_file_there",
        "test_symlinks.py::test_follow_writes_through_a_relative_link_and_keeps_the_link",
        "test_symlinks.py::test_write_file_atomic_replaces_a_link_instead_of_following_it",
        # perm= in the transaction: refused where it does not hold (issue 18).
        "test_transaction.py::test_an_exception_in_the_block_publishes_nothing",
        "test_transaction.py::test_snapshot_reads_one_generation",
        "test_transaction.py::test_a_new_file_gets_the_umask_default",
        "test_transaction.py::test_every_staged_file_is_created_private",
        "test_transaction.py::test_perm_is_exact_whatever_the_umask",
        "test_transaction.py::test_without_perm_an_existing_file_keeps_its_mode",
        "test_transaction.py::test_writing_the_same_name_twice_last_wins",
    ),
    # Owners kept on replace, files given away: ntfs-3g keeps no owner, exFAT refuses chown.
    "chown": (
        "test_atomic_path.py::test_an_existing_targets_owner_and_setgid_mode_are_kept",
        "test_permissions.py::test_replacing_keeps_owner_group_and_setuid_as_root",
        "test_permissions.py::test_writer_that_cannot_give_the_file_away_*",
        "test_transaction.py::test_without_perm_an_existing_file_keeps_its_owner",
    ),
    "symlinks": (
        "test_api.py::test_name_with_a_nul_raises_value_error_every_time_and_creates_nothing",
        "test_atomic_path.py::test_a_symlink_at_the_target_is_followed_or_replaced",
        "test_atomic_path.py::test_anything_but_a_regular_file_raises_names_both_and_is_removed",
        "test_batch.py::test_symlinks_are_followed",
        "test_batch.py::test_two_spellings_of_one_file_are_refused_before_anything_is_written",
        "test_copy.py::test_copy_onto_itself_is_refused",
        "test_copy.py::test_copy_over_a_symlink_to_the_source_itself_*",
        "test_copy.py::test_symlink_dst_is_followed_or_replaced",
        "test_copy.py::test_symlink_source_is_followed",
        "test_documents.py::test_read_json_of_a_missing_file_raises_or_returns_the_default",
        "test_documents.py::test_update_through_a_symlink_*",
        "test_errors.py::test_symlink_into_other_filesystem_is_written_through_without_exdev",
        "test_errors.py::test_write_file_atomic_replaces_a_cross_filesystem_link_itself",
        "test_symlinks.py::*",
        "test_transaction.py::test_a_symlink_at_a_name_is_replaced_not_followed",
    ),
    # What O_TMPFILE staging itself does (FUSE refuses O_TMPFILE: named files instead).
    "o_tmpfile": (
        "test_permissions.py::test_an_anonymous_staged_file_is_chmodded_only_when_*",
        "test_planted_names.py::test_killed_writer_with_anonymous_staging_leaves_nothing_behind",
    ),
    # The chunked copy (copy_file_range, sendfile, read/write): faults injected into it,
    # progress between chunks, a source changed mid-copy. btrfs and xfs reflink instead.
    "streamed_copy": (
        "test_copy.py::test_copy_errors_name_the_destination",
        "test_copy.py::test_exception_in_progress_aborts_the_copy",
        "test_copy.py::test_progress_is_monotonic_and_ends_at_the_size",
        "test_copy.py::test_real_error_mid_copy_is_raised_not_fallen_back_from",
        "test_copy.py::test_refused_fast_paths_fall_back_at_the_same_offset",
        "test_copy.py::test_source_changed_during_copy_is_rejected",
    ),
    "hardlinks": (
        "test_batch.py::test_distinct_files_with_alike_names_are_written",
        "test_copy.py::test_copy_onto_itself_is_refused",
    ),
    # One file under two names recognised by its inode number (sshfs makes numbers up).
    "shared_inodes": ("test_copy.py::test_copy_onto_itself_is_refused[*-hard link-*]",),
    # Links that leave their directory (Debian's sshfs: contain_symlinks, EPERM).
    "absolute_symlinks": (
        "test_errors.py::test_symlink_into_other_filesystem_is_written_through_without_exdev",
        "test_symlinks.py::test_follow_a_chain_of_links_replaces_the_last_file",
        "test_symlinks.py::test_follow_link_into_another_directory_replaces_the_file_there",
    ),
    "fifos": (
        "test_api.py::test_a_fifo_is_never_replaced",
        "test_atomic_path.py::test_anything_but_a_regular_file_raises_names_both_and_is_removed",
        "test_atomic_path.py::test_bad_arguments_raise_before_anything_is_created",
        "test_copy.py::test_fifo_source_raises_einval_without_waiting_for_a_writer",
        "test_transaction.py::test_writing_over_a_directory_or_a_fifo_raises_at_once",
    ),
    # Create-only writes (mode "x", overwrite=False): exFAT has neither
    # RENAME_NOREPLACE nor link(); issue 18 makes the error say so.
    "create_only": (
        "test_api.py::test_staged_file_is_named_after_the_target[*-x*]",
        "test_concurrency.py::test_create_only_race_*",
        "test_errors.py::test_eio_on_directory_fsync_of_created_file_raises_not_durable",
        "test_modes.py::test_create_only_modes_create_a_new_file",
        "test_modes.py::test_every_durability_level_publishes_the_content[*-xb-*]",
        "test_modes.py::test_overwrite_false_refuses_an_existing_target",
        "test_modes.py::test_text_modes_write_what_open_writes[*-x-*]",
        "test_modes.py::test_text_modes_write_what_open_writes[*-xt-*]",
        "test_symlinks.py::test_create_only_with_nothing_at_the_path_creates_it",
    ),
}

# The `staging` fixture's "named" run (named temporary files forced even where
# O_TMPFILE works) only on these filesystems of the matrix: it halves the matrix's
# cost, and the named path is what every filesystem without O_TMPFILE (the FUSE
# ones) takes anyway in its "tmpfile" run, after a refused O_TMPFILE.
NAMED_ON = ("ext4",)

"""Tests that fail on a filesystem today ONLY because of a known library gap of issue
18 (being fixed on another branch). Each is xfail(strict=True): when the library
change merges, the test passes, the strict xfail turns into a failure, and the
entry must go. (filesystem names, "module::test" or "module::test[glob]", reason)."""
# Found by the matrix, not among issue 18's listed gaps (reported to the lead): after a
# create-only write publishes by link() + unlink() (no RENAME_NOREPLACE on FUSE),
# bindfs's attribute cache still shows st_nlink 2, and the next write refuses the file
# as hard-linked (HardLinkedTargetError), deterministically.
KNOWN_GAPS: list[tuple[frozenset[str], str, str]] = [
    *(
        (
            frozenset({"sshfs"}),
            f"test_permissions.py::test_mode_matches_open_across_umask_and_existing_file[*-{u}-None-*]",
            "sshfs: the server's umask (022) applies to the file crashsafe creates, and a "
            "new file gets 0644 where open() under this umask gives more",
        )
        for u in ("0o0", "0o2")
    ),
    (
        frozenset({"sshfs"}),
        "test_permissions.py::test_writer_that_cannot_give_the_file_away_*",
        "sshfs: the SFTP server creates every file as its own user (root here), whoever "
        "writes: a writer that is not root does not own its replacement",
    ),
]

"""Known gaps whose failure depends on a race (it shows in most runs, not all): a strict
xfail would fail the runs where the race did not show, so these are xfail(strict=False)
and their XPASSes are listed in the summary. Same format as KNOWN_GAPS."""
RACY_GAPS: list[tuple[frozenset[str], str, str]] = []


@dataclass(frozen=True)
class Selection:
    """The filesystems chosen with ``--fs``, and why the matrix is off if it is."""

    names: tuple[str, ...]
    off_because: str = ""


def select(value: str) -> Selection:
    """Parse ``--fs``: ``all`` (every filesystem of the registry), ``tmp`` (no matrix:
    pytest's temporary directory only), or a comma-separated list of names."""
    if value == "tmp":
        return Selection((), "--fs tmp")
    if value == "all":
        if os.geteuid() != 0:
            if IN_CI:
                raise pytest.UsageError("--fs all under CI=true needs root (loop mounts)")
            return Selection((), "not root: nothing can be mounted")
        return Selection(NAMES)
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise pytest.UsageError(
            f"--fs: unknown {', '.join(unknown)}; known: all, tmp, {', '.join(NAMES)}"
        )
    return Selection(names)


def on_matrix(nodeid: str, fixturenames: list[str] | tuple[str, ...]) -> bool:
    """Whether the test *nodeid* runs once per filesystem."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if module not in MODULES or "workdir" not in fixturenames:
        return False
    return not any(_matches(nodeid, p) for p in SINGLE)


def known_gap(fs: str, nodeid: str) -> tuple[str, bool] | None:
    """``(reason, strict)`` of the gap that makes *nodeid* fail on filesystem *fs*:
    an entry of :data:`KNOWN_GAPS` (strict), or of :data:`RACY_GAPS` (not strict)."""
    for names, pattern, reason in KNOWN_GAPS:
        if fs in names and _matches(nodeid, pattern):
            return reason, True
    for names, pattern, reason in RACY_GAPS:
        if fs in names and _matches(nodeid, pattern):
            return reason, False
    return None


def _matches(nodeid: str, pattern: str) -> bool:
    """Whether *nodeid* is the test ``module::test`` of *pattern* (fnmatch), with its
    parameters matching the glob in ``[...]`` if the pattern has one."""
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    test = nodeid.split("::", 1)[1] if "::" in nodeid else ""
    function, _, params = test.partition("[")
    wanted, _, glob = pattern.partition("[")
    if not fnmatch.fnmatchcase(f"{module}::{function}", wanted):
        return False
    # Not fnmatch on the whole id: "[" opens a character class there.
    return not glob or fnmatch.fnmatchcase(params.removesuffix("]"), glob.removesuffix("]"))


def required(nodeid: str) -> tuple[Capability, ...]:
    """The capabilities :data:`REQUIRES` lists for the test *nodeid*."""
    return tuple(
        capability
        for capability, patterns in REQUIRES.items()
        if any(_matches(nodeid, p) for p in patterns)
    )
