"""The toolkit's own error type: every error a user can cause by what they pass (a file, a line, a key)
derives from ``SpeechkitError``, and the command line prints it as one ``error: …`` line (the
traceback only with ``--debug`` or ``SPEECHKIT_DEBUG=1``)."""


class SpeechkitError(Exception):
    """Bad input or a refused operation; the message names the file, line or key."""


def yaml_problem(path, e: Exception) -> str:
    """``path:line:column: invalid YAML (problem)`` for a ``yaml.YAMLError`` (PyYAML itself says
    "<unicode string>" when it parsed text)."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
    return f"{where}: invalid YAML ({getattr(e, 'problem', None) or e})"
