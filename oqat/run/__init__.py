"""The run: `oqat run`'s pipeline (stages, search, export, report; resumable) and its report."""
