"""Packaging for txcmux: many protocols on one port for Twisted."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="txcmux",
    version="0.1.0",
    description=(
        "Serve HTTP/1.1, HTTP/2, gRPC, TLS and any Twisted protocol on one port"
    ),
    long_description=Path(__file__).with_name("README.md").read_text("utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=[*find_packages(include=["txcmux", "txcmux.*"]), "twisted.plugins"],
    package_data={"txcmux": ["py.typed"]},
    include_package_data=False,
    install_requires=[
        "twisted[http2,tls]>=24.7.0",
        "h2>=4.1,<5",
        "hpack>=4.0,<5",
        "hyperframe>=6.0,<7",
        "grpcio>=1.60",
        "grpcio-health-checking>=1.60",
        "grpcio-reflection>=1.60",
        "protobuf>=4.21",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "hypothesis>=6",
            "mypy>=1.10",
            "mypy-zope>=1.0",
            "ruff>=0.5",
        ],
        # The benchmark suite's chart; the suite itself needs wrk and h2load.
        "bench": ["matplotlib>=3.5"],
    },
    entry_points={
        "txcmux.matchers": [
            "redis = txcmux.matchers._extra:redis",
            "postgres = txcmux.matchers._extra:postgres",
        ],
    },
    zip_safe=False,
)
