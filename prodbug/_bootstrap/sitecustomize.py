"""prodbug's bootstrap: start the agent at interpreter start in a service's Python processes.

``prodbug run`` puts this folder first on ``PYTHONPATH``, so every Python process of the
service imports this module at start-up (``site`` imports ``sitecustomize``). It:

1. runs the ``sitecustomize`` it shadows (the next one on ``sys.path``: an image's own, a
   distribution's), as if this one were not there; its failures surface as they would
   without prodbug;
2. starts the agent (``import prodbug.autostart``) only in the service's own processes:

   * under ``prodbug run`` (``PRODBUG_RUN_PID`` set): the process whose pid is
     ``PRODBUG_RUN_PID`` (the command ``prodbug run`` exec'd, same pid), and the children
     that ``multiprocessing`` starts with spawn or forkserver (``uvicorn --workers``);
     children forked from a process with an agent get theirs from the agent's fork hook.
     Every other Python process (pip, a ``python -c`` the service runs) is left alone,
     unless ``PRODBUG_RUN_EVERY_PYTHON=1`` (``prodbug run --every-python``);
   * without ``prodbug run`` (this file copied into a folder of one's own, as
     ``agent/sitecustomize/``): every process where ``PRODBUG_AUTOSTART=1`` or
     ``PRODBUG_LISTEN`` is set.

It never raises or prints anything of its own: a failure to start the agent is logged to
the ``prodbug.agent`` logger. In a process it leaves alone it imports nothing of prodbug.
Stdlib only: it also runs in interpreters where prodbug is not installed.
"""

import os
import sys

#: Set in the namespace of the sitecustomize we run next: another copy of this file down
#: the path (a nested ``prodbug run``, the deploy kit's copy) then only chains further.
_CHAINED = "__prodbug_bootstrap_chained__"


def _prodbug_chain(here: str) -> None:
    """Run the next ``sitecustomize`` on ``sys.path`` after ``here``, under the same name."""
    import importlib.machinery
    import importlib.util

    try:
        here_real = os.path.realpath(here)
        entries = [p for p in sys.path if isinstance(p, str)]
        same = [i for i, p in enumerate(entries) if os.path.realpath(p or ".") == here_real]
        if not same:
            return  # not imported from the path: what would come next is unknown
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", entries[same[-1] + 1:])
    except Exception:  # a broken path entry: nothing to chain to
        return
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    setattr(module, _CHAINED, True)
    # Under the name "sitecustomize", replacing this module: ``import sitecustomize``
    # afterwards gives the shadowed module, whose globals are its own. Its exceptions
    # propagate to site, which reports them as it would have without prodbug.
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _prodbug_wanted() -> bool:
    env = os.environ
    run_pid = env.get("PRODBUG_RUN_PID")
    if run_pid is None:
        return env.get("PRODBUG_AUTOSTART") == "1" or bool(env.get("PRODBUG_LISTEN"))
    if run_pid == str(os.getpid()) or env.get("PRODBUG_RUN_EVERY_PYTHON") == "1":
        return True
    # multiprocessing's spawn children: python -c 'from multiprocessing.spawn import
    # spawn_main; ...' --multiprocessing-fork. Its forkserver: python -c 'from
    # multiprocessing.forkserver import main; ...' (the workers it forks inherit its agent).
    if "--multiprocessing-fork" in getattr(sys, "argv", ()):
        return True
    argv = getattr(sys, "orig_argv", ())
    return any(isinstance(a, str) and a.startswith("from multiprocessing.forkserver import")
               for a in argv)


def _prodbug_start() -> None:
    try:
        if not _prodbug_wanted():
            return  # the common case: nothing of prodbug, not even logging, is imported
        import prodbug.autostart  # noqa: F401  (logs its own failures)
    except BaseException:  # never into the host
        # Not even prodbug importable here (another interpreter on the same PYTHONPATH):
        # without a handler, logging's last resort would print to the host's stderr.
        import logging

        logging.getLogger("prodbug").addHandler(logging.NullHandler())
        logging.getLogger("prodbug.agent").warning(
            "prodbug bootstrap: could not start the agent in pid %d", os.getpid(),
            exc_info=True)


def _prodbug_bootstrap(chained: bool) -> None:
    failure = None
    try:
        _prodbug_chain(os.path.dirname(os.path.abspath(__file__)))
    except BaseException as exc:
        failure = exc
    if not chained:
        _prodbug_start()
    if failure is not None:
        raise failure


_prodbug_bootstrap(bool(globals().pop(_CHAINED, False)))
