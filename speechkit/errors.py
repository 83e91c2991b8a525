"""The toolkit's own error type: every error a user can cause by what they pass (a file, a line, a key)
derives from ``SpeechkitError``, and the command line prints it as one ``error: …`` line (the
traceback only with ``--debug`` or ``SPEECHKIT_DEBUG=1``)."""


class SpeechkitError(Exception):
    """Bad input or a refused operation; the message names the file, line or key."""
