"""The run's report: building it, JSON, Markdown, and the constraint checks."""
