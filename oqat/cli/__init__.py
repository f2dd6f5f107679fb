"""The `oqat` command line: the options and start-up its commands share (`options`), the
commands by concern (`networks`, `deployment`, `runs`) and the parser (`main`)."""
