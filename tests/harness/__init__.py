"""Shared machinery for crashsafe's tests: requirements, real filesystems, checks."""
