"""The attacker CLI at its default log level does not log each HTTP request (a black-box attack
through the edge makes thousands: ``make demo`` printed about a thousand such lines); at
``--log-level debug`` they are back."""

from __future__ import annotations

import logging

import pytest

from attacker.__main__ import main


@pytest.mark.parametrize("level, expected", [("info", logging.WARNING), ("debug", logging.NOTSET)])
def test_httpx_request_lines_only_at_debug(tmp_path, level, expected):
    httpx_logger = logging.getLogger("httpx")
    before = httpx_logger.level
    httpx_logger.setLevel(logging.NOTSET)
    try:
        assert main(["captures", "--store", str(tmp_path / "none"), "--log-level", level]) == 2
        assert httpx_logger.level == expected
    finally:
        httpx_logger.setLevel(before)
