"""`canary`, the command line: the app and its edge (app), one module per group of commands, and the options they
share (options). Thin: each command calls the layers below."""
