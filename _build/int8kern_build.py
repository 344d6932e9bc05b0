"""PEP 517 build backend for int8kern: setuptools.build_meta, run against the torch and
setuptools of the environment int8kern is being installed into.

Why a backend of our own: int8kern._C must be compiled against the torch it will be imported
with (the C++ ABI and the op registration API are torch-version specific), so listing torch in
`[build-system] requires` would be wrong twice over: pip would download a second torch (gigabytes,
and impossible offline) into the isolated build environment, and it might not be the version the
user imports. With `requires = []` pip installs nothing for the build, so a plain `pip install .`
works offline; this module then puts the invoking environment back on sys.path.

How the invoking environment is found. pip runs each build hook as `sys.executable
_in_process.py ...`, with its own sys.executable: the interpreter of the environment it installs
into (a venv's pip runs that venv's python; `pip --python X` re-runs pip under X). Build isolation
does not change the interpreter; it hides that interpreter's site-packages (a sitecustomize.py on
PYTHONPATH removes the directories site.py added for sys.prefix, and PYTHONNOUSERSITE=1 drops the
user site) and puts its temporary prefix first. So this interpreter's own site directories,
`site.getsitepackages()` (sys.prefix's, plus the base interpreter's for a venv made with
--system-site-packages, exactly as at run time), still name the environment the user will import
int8kern from. Other signals are weaker: VIRTUAL_ENV is unset for a venv used without
activating it (and uv sets it to its own build venv), PIP_* variables are user configuration, and
the parent process is pip itself, on the same interpreter. The directories are appended, after
the build environment's, with site.addsitedir so that their .pth files count as they do at
import time; under --no-build-isolation they are already on sys.path and nothing changes.

uv builds in a fresh venv of its own (sys.prefix and VIRTUAL_ENV are that venv; the target
appears only on uv's command line), and so does `python -m build`; there is no torch to find
and the message below names their flags that build in the target environment instead.
"""
import importlib.util
import os
import site
import sys
import sysconfig


def _add_invoking_environment():
    dirs = list(site.getsitepackages())
    if sys.prefix == sys.base_prefix:
        # Not a venv: `pip install --user torch` lands in the user site, which is on sys.path at
        # run time but was hidden here by pip's PYTHONNOUSERSITE=1.
        dirs.append(site.getusersitepackages())
    known = {os.path.normcase(os.path.abspath(p)) for p in sys.path}
    for d in dirs:
        if os.path.isdir(d) and os.path.normcase(os.path.abspath(d)) not in known:
            site.addsitedir(d)
    # The environment's scripts (its ninja, for one), as if it were activated; appended so that
    # the user's PATH keeps precedence.
    scripts = sysconfig.get_paths()["scripts"]
    path = os.environ.get("PATH", "").split(os.pathsep)
    if os.path.isdir(scripts) and scripts not in path:
        os.environ["PATH"] = os.pathsep.join(path + [scripts])


_add_invoking_environment()

# Checked here, before setuptools is imported, so that an environment missing either gets one
# message that says what to do (setup.py repeats the torch part for `python setup.py` runs).
_missing = [m for m in ("torch", "setuptools") if importlib.util.find_spec(m) is None]
if _missing:
    sys.exit(
        "int8kern compiles against the torch you will import, with the setuptools beside it, so "
        "both must be installed first, in the environment int8kern is installed into; found no "
        f"{' and no '.join(_missing)} for {sys.executable}:\n"
        "    pip install torch\n    pip install .\n"
        "uv and `python -m build` build in an isolated environment of their own, where there is "
        "no torch; build against the target's torch with:\n    uv pip install --no-build-isolation .\n"
        "    python -m build --no-isolation"
    )

from setuptools import build_meta as _meta  # noqa: E402

get_requires_for_build_wheel = _meta.get_requires_for_build_wheel
get_requires_for_build_editable = _meta.get_requires_for_build_editable
get_requires_for_build_sdist = _meta.get_requires_for_build_sdist
prepare_metadata_for_build_wheel = _meta.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _meta.prepare_metadata_for_build_editable
build_wheel = _meta.build_wheel
build_editable = _meta.build_editable
build_sdist = _meta.build_sdist
