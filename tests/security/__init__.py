"""Attack, fault and concurrency tests: each names the CVE or RFC section it guards."""
