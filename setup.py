"""What txcmux's packaging needs beyond pyproject.toml: the packages and their data.

Name, version, dependencies, extras and entry points are in pyproject.toml.
This file stays for the flat layout's sake: besides ``txcmux`` the wheel ships
``twisted/plugins/txcmux_plugin.py`` into Twisted's ``twisted.plugins``
namespace, which must not gain an ``__init__.py`` (``twisted/`` and
``twisted/plugins/`` belong to Twisted), and package data is listed file by
file so that neither ``dropin.cache`` nor anything else stray reaches the wheel.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["txcmux", "txcmux.*"]), "twisted.plugins"],
    package_data={
        "txcmux": ["py.typed"],
        "txcmux.testing": ["_captures/*.bin", "_captures/README.md"],
    },
    include_package_data=False,
)
