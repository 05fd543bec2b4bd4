"""crashcheck: find the crash bugs of any program."""
