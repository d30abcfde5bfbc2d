"""A manifest of rows: parse, plan, run within the account quota, report and shard."""
