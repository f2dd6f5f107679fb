"""Search spaces: their structure (`structure`), the `Arch` value and its text forms (`arch`),
and the built-in spaces by name (`builtin`)."""
