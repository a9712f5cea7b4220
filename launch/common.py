"""Shared launcher set-up."""

from __future__ import annotations

import os
import re
import sys
import tempfile

# A line of absl / TensorFlow's C++ log: severity letter, date, time, thread, file:line].
_CPP_LOG_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
_SEVERITIES = b"IWEF"  # the levels TF_CPP_MIN_LOG_LEVEL counts: 0 info ... 3 fatal
# What absl prints before the first line it logs while no one has set it up yet.
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called"


def quiet_logs() -> None:
    """Warnings and errors only: dm_control and TensorFlow log a lot at INFO."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def import_tensorflow_quietly() -> None:
    """Imports tempo (its environment defaults) and then TensorFlow, holding back
    the C++ log lines below TF_CPP_MIN_LOG_LEVEL that TensorFlow prints while loading.

    TensorFlow's shared objects log from their static initializers, before
    TensorFlow applies TF_CPP_MIN_LOG_LEVEL: "Could not find cuda drivers" (a
    CPU machine), "oneDNN custom operations are on" (tempo turns them on),
    each after absl's preamble line. Every line comes twice, because
    `import tensorflow` loads _pywrap_profiler_plugin.so (for
    tf.profiler.experimental.client), which carries its own copy of TensorFlow's
    logging and of those initializers. The lines are written to file descriptor
    2 from C++, so that descriptor points at a temporary file while TensorFlow
    loads; then every line is written back except the log lines below the level
    and absl's preamble (with the level at 0 nothing is held back). A crash
    inside the import would lose its own output."""
    import tempo  # noqa: F401  (TF_CPP_MIN_LOG_LEVEL and the rest, before TensorFlow)

    if "tensorflow" in sys.modules:
        return
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    if level <= 0:
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured if not _below(line, level)]
            if kept:
                os.write(2, b"".join(kept))


def _below(line: bytes, level: int) -> bool:
    """Whether `line` is absl's preamble or a C++ log line under `level`."""
    if line.startswith(_ABSL_PREAMBLE):
        return True
    match = _CPP_LOG_LINE.match(line)
    return match is not None and _SEVERITIES.index(match.group(1)) < level


def run_main(main) -> None:
    """`absl.app.run(main)`, then an exit that skips the interpreter's final
    clean-up. Once a launcher is done, every file is written and closed and the
    environments are shut; what remains is TensorFlow's C++ teardown of the traced
    functions, which took 15 of a debug run's 70 seconds on a 2-core EPYC (and a
    killed or failed run's error line would wait as long). The exit handlers
    (multiprocessing's, logging's) still run; the exit code and a `sys.exit`
    message come out as Python's own exit would give them."""
    import atexit

    from absl import app

    try:
        app.run(main)
        code = 0
    except SystemExit as done:
        code = done.code
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
