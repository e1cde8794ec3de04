"""PEP 517 build backend: setuptools' own, found on the system when possible.

pip builds in an isolated environment that hides the system's packages and
would download setuptools from PyPI. This backend looks for setuptools (and
wheel) in the interpreter's own site directories first (on Debian:
python3-setuptools and python3-wheel in /usr/lib/python3/dist-packages), so
`pip install ./clients/python` works offline; where there is none, it asks
pip for them like any setuptools project.
"""
import os
import site
import sys


def _system_site_dirs():
    dirs = []
    for prefix in dict.fromkeys([sys.base_prefix, sys.prefix]):
        try:
            dirs += site.getsitepackages([prefix])
        except Exception:
            pass
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _find(module):
    try:
        __import__(module)
        return True
    except ImportError:
        pass
    for d in _system_site_dirs():
        if os.path.isdir(os.path.join(d, module)) and d not in sys.path:
            sys.path.append(d)  # after the isolated environment's own paths
            try:
                __import__(module)
                return True
            except ImportError:
                sys.path.remove(d)
    return False


def _have_backend():
    if not _find("setuptools"):
        return False
    import setuptools

    try:
        major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    except ValueError:
        major, minor = 0, 0
    # setuptools 70.1 builds wheels by itself; older ones need the wheel package.
    return (major, minor) >= (70, 1) or _find("wheel")


_HAVE = _have_backend()

if _HAVE:
    from setuptools import build_meta as _b

    build_wheel = _b.build_wheel
    build_sdist = _b.build_sdist
    prepare_metadata_for_build_wheel = _b.prepare_metadata_for_build_wheel
    if hasattr(_b, "build_editable"):
        build_editable = _b.build_editable
        prepare_metadata_for_build_editable = _b.prepare_metadata_for_build_editable

        def get_requires_for_build_editable(config_settings=None):
            return []

    def get_requires_for_build_wheel(config_settings=None):
        return []  # setuptools' own answer ("wheel") is already importable

    def get_requires_for_build_sdist(config_settings=None):
        return []
else:
    _NEEDED = ["setuptools>=61", "wheel"]

    def get_requires_for_build_wheel(config_settings=None):
        return list(_NEEDED)

    def get_requires_for_build_sdist(config_settings=None):
        return list(_NEEDED)

    def get_requires_for_build_editable(config_settings=None):
        return list(_NEEDED)

    def _missing(*args, **kwargs):
        raise RuntimeError("setuptools>=61 and wheel are needed to build worker_heartbeat "
                           "(Debian: apt-get install python3-setuptools python3-wheel)")

    build_wheel = build_sdist = build_editable = _missing
