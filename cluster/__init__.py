"""Site-partitioned hubs: which partition a site belongs to, and who owns each partition
(leases with fencing tokens in PostgreSQL). See docs/scaling.md."""
