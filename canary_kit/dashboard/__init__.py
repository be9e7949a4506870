"""`canary dashboard`: the server (one poller, one view, the CLI's actions behind a token), its charts, and the
page's static files."""
