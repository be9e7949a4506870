"""What the kit sees of each version: figures from /metrics (scrape, metrics), the answers' predictions in nginx's
access log, the ledger of answers and labels (and what it says of each version), log rotation, and the lines a
person reads (views)."""
