"""The report of ``augment evaluate``: tables, figures and the self-contained HTML page."""
