"""The command-line tools. Each module's `main(argv=None)` is a console script
(`cliptune-<name>`, see pyproject.toml) and the body of `src/<name>.py`: it parses,
does the work through the package, and prints user errors without a traceback.
The package itself never imports these modules.
"""
