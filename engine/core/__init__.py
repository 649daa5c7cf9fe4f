"""The engine loop and what it steps over: requests and deltas, sequences, the scheduler, KV slots,
prompt rendering and incremental detokenization."""
