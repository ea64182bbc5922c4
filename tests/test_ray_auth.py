"""A private Ray instance started by paravideo keeps Ray's authentication: paravideo never turns it off
(on Linux, Ray listens on every interface even for a local instance), and says so when the user did."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture
def fake_init(monkeypatch):
    """ray.init / shutdown replaced: records the environment the instance would start with."""
    import os

    seen: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.append(dict(os.environ)))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    return seen


def _session(make_config):
    from paravideo.launch.ray_session import ray_session

    config = make_config(parallel={"pipeline": 2}, launch={"launcher": "ray", "nproc": 2, "ray_address": "local"})
    with ray_session(config.launch):
        pass


def test_private_instance_keeps_ray_authentication(fake_init, make_config, monkeypatch, capsys):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    _session(make_config)
    assert len(fake_init) == 1 and "RAY_AUTH_MODE" not in fake_init[0]  # Ray's default: token auth
    assert "warning" not in capsys.readouterr().err


def test_disabled_authentication_is_the_users_and_is_named(fake_init, make_config, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _session(make_config)
    assert fake_init[0]["RAY_AUTH_MODE"] == "disabled"
    err = capsys.readouterr().err
    assert "RAY_AUTH_MODE=disabled" in err and "every interface" in err
