"""Shared fixtures. Integration tests use real sockets on loopback only."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces / raw sockets / mysqld)")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)
