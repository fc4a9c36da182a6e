"""The probe: Segmind's free credits endpoint decides when a paused fleet resumes."""

from __future__ import annotations

import httpx

from relightq.segmind.client import SegmindClient
from relightq.settings import get_settings
from relightq.throttle.fleet import LocalFleet
from relightq.throttle.service import probe, probe_delay
from tests.conftest import Services


def test_probe_keeps_the_fleet_paused_until_credits_return_then_resumes(
    services: Services, simulator: httpx.Client
) -> None:
    fleet = LocalFleet(4, 100)
    fleet.pause("segmind_out_of_credits", "Not enough credits")
    client = SegmindClient(services.simulator, "k")
    simulator.post("/admin/config", json={"credits": 0.0}).raise_for_status()

    first = probe(fleet, client, get_settings())
    assert not first.resumed and first.credits == 0.0 and fleet.state().paused
    assert fleet.probe_failures() == 1

    simulator.post("/admin/config", json={"credits": 3.0}).raise_for_status()
    second = probe(fleet, client, get_settings())
    assert second.resumed and not fleet.state().paused and fleet.state().credits == 3.0
    assert simulator.get("/admin/stats").json()["calls"] == 0  # probes cost nothing


def test_probe_on_a_refused_key_stays_paused(services: Services, simulator: httpx.Client) -> None:
    simulator.post("/admin/config", json={"valid_keys": ["right"]}).raise_for_status()
    fleet = LocalFleet(4, 100)
    fleet.pause("segmind_unauthorized", "bad key")
    result = probe(fleet, SegmindClient(services.simulator, "wrong"), get_settings())
    assert not result.resumed and "refused" in (result.error or "")
    fixed = probe(fleet, SegmindClient(services.simulator, "right"), get_settings())
    assert fixed.resumed


def test_probe_intervals_back_off_to_a_ceiling() -> None:
    settings = get_settings().model_copy(
        update={"probe_interval_seconds": 30.0, "probe_max_interval_seconds": 600.0}
    )
    assert [probe_delay(n, settings) for n in range(7)] == [30, 60, 120, 240, 480, 600, 600]
