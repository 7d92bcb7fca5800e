"""batchd.cli: the `batchd` command (`batchd --help`), built on batchd.client only."""
