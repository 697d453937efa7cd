"""The output folder: every folder and file name, commits, key index, saved prefixes, lock, finalize."""
