"""Native mode: the warehouse reads the archive and runs the rules as SQL."""
