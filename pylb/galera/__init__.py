"""Galera support beyond the health check: the writer controller (one writer at a time,
`balance: writer-pin`) and the writer sync between pylb nodes."""
