"""The backup wing: Litestream replication of a log, replica URLs and listings, and the fleet
of replicated logs seen from an observer."""
