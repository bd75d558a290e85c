"""Reports: tables, plots (plots.py) and the HTML page (html.py)."""
