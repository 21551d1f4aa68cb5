"""docker-compose.yml is checked here, since no container runtime is available to run it:
every service has an image or a build, the long-running ones a health check, commands the
CLI knows, and a start order that migrates before serving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from app.cli import parser

ROOT = Path(__file__).resolve().parents[2]


def services() -> dict[str, Any]:
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    result: dict[str, Any] = spec["services"]
    return result


def test_every_service_has_an_image_or_build_and_the_long_running_ones_a_health_check():
    s = services()
    assert set(s) == {"postgres", "migrate", "api", "worker"}
    for name, svc in s.items():
        assert ("image" in svc) != ("build" in svc), name
        if name != "migrate":  # a one-shot job: it exits when the schema is current
            test = svc["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_services_start_in_order_postgres_then_migrate_then_api_and_worker():
    s = services()
    assert s["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        assert s[name]["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
        assert s[name]["restart"] == "unless-stopped"


def test_commands_and_health_checks_are_ones_the_cli_knows():
    s = services()
    for name in ("migrate", "api", "worker"):
        command = s[name]["command"]
        assert command[0] == "skiplock"
        parser().parse_args(command[1:])  # exits (SystemExit) on an unknown command or flag
    check = s["worker"]["healthcheck"]["test"]
    assert check[1] == "skiplock"
    assert parser().parse_args(check[2:]).worker is True
    assert "/health" in " ".join(s["api"]["healthcheck"]["test"])
