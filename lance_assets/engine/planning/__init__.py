"""Planning: which fragments to merge, into which files, and why the others are left alone."""
