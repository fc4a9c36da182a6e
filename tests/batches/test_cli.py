"""`relightq batch ...` against the real API, worker, simulator and S3 server."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from relightq.cli import app
from relightq.cli.batches import GAVE_UP
from tests.batches.helpers import catalog, csv_file, wait_batch
from tests.conftest import Services, TenantKey
from tests.jobs.test_end_to_end import SHOP_BUCKET, shop_image
from tests.support.faulty_proxy import DROP, Fault, api_error, faulty_proxy, url_of

pytestmark = pytest.mark.usefixtures("celery_worker")

runner = CliRunner()
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def cli_env(services: Services, tenant: TenantKey) -> dict[str, str]:
    return {"RELIGHTQ_API_URL": services.api, "RELIGHTQ_API_KEY": tenant.key}


def run(services: Services, tenant: TenantKey, *args: str, api_url: str | None = None) -> Result:
    """`relightq batch ARGS` as the tenant, polling fast when it watches."""
    if "--watch" in args:
        args = (*args, "--interval", "0.1")
    env = cli_env(services, tenant) | ({"RELIGHTQ_API_URL": api_url} if api_url else {})
    return runner.invoke(app, ["batch", *args], env=env)


def batch_id_of(result: Result) -> str:
    found = UUID.search(result.output)
    assert found, result.output
    return found.group()


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_bytes(csv_file(rows))
    return path


def test_submit_watch_runs_a_csv_to_completion_with_the_given_defaults(
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
    tmp_path: Path,
) -> None:
    urls = catalog(2, "cli-watch")
    source = write_csv(
        tmp_path / "catalog.csv",
        [{"subject_image": url, "external_id": f"SKU-{n}"} for n, url in enumerate(urls)],
    )

    result = run(
        services,
        tenant,
        *("submit", str(source), "--prompt", "studio light", "--name", "spring"),
        *("--set", "light_source=Left Light", "--set", "width=384"),
        *("--set", 'metadata={"season": "spring"}', "--watch"),
    )

    assert result.exit_code == 0, result.output
    batch_id = batch_id_of(result)
    assert "completed" in result.output and "every item succeeded" in result.output
    assert "2/2" in result.output
    batch = api.get(f"/v1/batches/{batch_id}").json()
    assert batch["status"] == "completed" and batch["counts"]["succeeded"] == 2
    assert batch["name"] == "spring"
    jobs = api.get("/v1/jobs", params={"batch_id": batch_id}).json()["items"]
    assert len(jobs) == 2
    for job in jobs:
        assert job["params"]["light_source"] == "Left Light"
        assert job["params"]["width"] == 384
        assert job["params"]["prompt"] == "studio light"
        assert job["metadata"] == {"season": "spring"}  # VALUE parsed as JSON: an object

    listed = run(services, tenant, "list")
    assert listed.exit_code == 0, listed.output
    assert batch_id in listed.output and "2/2" in listed.output


def test_results_and_errors_are_streamed_to_a_file_or_stdout(
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
    tmp_path: Path,
) -> None:
    urls = catalog(2, "cli-results")
    rows: list[dict[str, Any]] = [
        {"subject_image": urls[0], "external_id": "GOOD-1"},
        {"subject_image": urls[1], "external_id": "BAD", "steps": "500"},
        {"subject_image": urls[1], "external_id": "GOOD-2"},
    ]
    source = write_csv(tmp_path / "catalog.csv", rows)
    submitted = run(services, tenant, "submit", str(source), "--prompt", "x", "--skip-invalid")
    assert submitted.exit_code == 0, submitted.output
    assert "1 invalid row skipped" in submitted.output
    batch_id = batch_id_of(submitted)
    wait_batch(api, batch_id, "completed")

    out = tmp_path / "results.csv"
    result = run(services, tenant, "results", batch_id, "-o", str(out))

    assert result.exit_code == 0, result.output
    with out.open(newline="") as file:
        written = list(csv.DictReader(file))
    assert [(r["external_id"], r["status"]) for r in written] == [
        ("GOOD-1", "succeeded"),
        ("GOOD-2", "succeeded"),
    ]
    assert all(r["output_s3_uris"].startswith("s3://") for r in written)
    assert not (tmp_path / "results.csv.part").exists()

    errors_out = tmp_path / "errors.jsonl"  # the extension picks JSONL
    result = run(services, tenant, "results", batch_id, "--errors", "-o", str(errors_out))
    assert result.exit_code == 0, result.output
    [rejected] = [json.loads(line) for line in errors_out.read_text().splitlines()]
    assert (rejected["row"], rejected["status"], rejected["external_id"]) == (2, "rejected", "BAD")
    assert "steps" in rejected["error"]["message"]

    to_stdout = run(services, tenant, "results", batch_id, "--errors", "--format", "csv")
    assert to_stdout.exit_code == 0, to_stdout.output
    [row] = list(csv.DictReader(to_stdout.stdout.splitlines()))
    assert row["external_id"] == "BAD" and row["error_code"] == "validation_error"


def test_a_bad_row_is_reported_by_field_and_nothing_is_stored(
    services: Services, tenant: TenantKey, api: httpx.Client, tmp_path: Path
) -> None:
    rows = [
        {"subject_image": "https://example.com/a.png"},
        {"subject_image": "https://example.com/b.png", "light_source": "Moon Light"},
    ]
    source = write_csv(tmp_path / "bad.csv", rows)

    result = run(services, tenant, "submit", str(source), "--prompt", "x")

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "1 of 2 rows are invalid" in result.output
    assert "rows[2].light_source" in result.output
    assert "allowed:" in result.output and "Left Light" in result.output
    assert api.get("/v1/batches").json()["items"] == []
    listed = run(services, tenant, "list")
    assert listed.exit_code == 0 and "No batches" in listed.output


def test_errors_of_the_api_and_of_the_command_line_exit_cleanly(
    services: Services, tenant: TenantKey, tmp_path: Path
) -> None:
    env = {"RELIGHTQ_API_URL": services.api, "RELIGHTQ_API_KEY": "rq_not-a-key"}
    unauthorized = runner.invoke(app, ["batch", "status", str(uuid.uuid4())], env=env)
    assert unauthorized.exit_code == 1 and "HTTP 401" in unauthorized.output

    missing = run(services, tenant, "status", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "HTTP 404" in missing.output

    no_file = run(services, tenant, "submit", str(tmp_path / "nope.csv"))
    assert no_file.exit_code == 2 and "nope.csv" in no_file.output

    bad_set = run(services, tenant, "submit", f"s3://{SHOP_BUCKET}/x/", "--set", "width")
    assert bad_set.exit_code == 2 and "KEY=VALUE" in bad_set.output

    env = {"RELIGHTQ_API_URL": "http://127.0.0.1:9", "RELIGHTQ_API_KEY": tenant.key}
    unreachable = runner.invoke(app, ["batch", "list"], env=env)
    assert unreachable.exit_code == 1 and "could not talk to the relightq API" in (
        unreachable.output
    )
    assert "Traceback" not in unauthorized.output + missing.output + unreachable.output


def test_an_s3_prefix_is_submitted_as_a_source(
    services: Services, tenant: TenantKey, api: httpx.Client, simulator: httpx.Client
) -> None:
    prefix = f"cli-prefix-{uuid.uuid4().hex[:8]}"
    shop_image(f"{prefix}/a.png")
    shop_image(f"{prefix}/b.png")

    result = run(
        services, tenant, "submit", f"s3://{SHOP_BUCKET}/{prefix}/", "--prompt", "sunset", "--watch"
    )

    assert result.exit_code == 0, result.output
    batch = api.get(f"/v1/batches/{batch_id_of(result)}").json()
    assert batch["source"] == f"s3://{SHOP_BUCKET}/{prefix}/"
    assert batch["total"] == 2 and batch["counts"]["succeeded"] == 2


def test_a_json_file_of_items_is_sent_as_a_json_batch(
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
    tmp_path: Path,
) -> None:
    urls = catalog(2, "cli-json")
    listed = tmp_path / "items.json"
    listed.write_text(json.dumps([{"subject_image": u, "external_id": "A"} for u in urls[:1]]))
    wrapped = tmp_path / "batch.json"
    wrapped.write_text(
        json.dumps(
            {
                "name": "from a file",
                "defaults": {"prompt": "file prompt", "width": 384},
                "items": [{"subject_image": urls[1]}],
            }
        )
    )

    a_list = run(services, tenant, "submit", str(listed), "--prompt", "cli prompt", "--watch")
    an_object = run(services, tenant, "submit", str(wrapped), "--set", "width=448", "--watch")
    broken = tmp_path / "broken.json"
    broken.write_text('{"items": ')
    refused = run(services, tenant, "submit", str(broken))

    assert a_list.exit_code == 0, a_list.output
    assert an_object.exit_code == 0, an_object.output
    [first] = api.get("/v1/jobs", params={"batch_id": batch_id_of(a_list)}).json()["items"]
    assert first["params"]["prompt"] == "cli prompt" and first["external_id"] == "A"
    batch = api.get(f"/v1/batches/{batch_id_of(an_object)}").json()
    assert batch["name"] == "from a file"
    [second] = api.get("/v1/jobs", params={"batch_id": batch["id"]}).json()["items"]
    # The file's defaults, with the command line's --set winning where both speak.
    assert (second["params"]["prompt"], second["params"]["width"]) == ("file prompt", 448)
    assert refused.exit_code == 2
    assert "is not valid JSON" in re.sub(r"[\s│╭╮╰╯─]+", " ", refused.output)


def test_ctrl_c_stops_watching_not_the_batch_and_cancel_stops_it(
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
    tmp_path: Path,
) -> None:
    simulator.post("/admin/config", json={"latency": 0.5}).raise_for_status()
    _, url = shop_image("cli-cancel/big.png")
    source = write_csv(tmp_path / "big.csv", [{"subject_image": url}] * 100)
    batch_id = batch_id_of(run(services, tenant, "submit", str(source), "--prompt", "x"))
    # A real process, so Ctrl-C is a real SIGINT; off a terminal it prints a line per change.
    watcher = subprocess.Popen(
        [str(Path(sys.executable).parent / "relightq"), "batch", "status", batch_id, "--watch"],
        env={**os.environ, **cli_env(services, tenant)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell's background job starts with SIGINT ignored, and Python then never turns
        # it into KeyboardInterrupt: give the watcher the default, as a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert watcher.stdout is not None
    first = watcher.stdout.readline()
    assert "/100 done" in first, first

    watcher.send_signal(signal.SIGINT)
    rest = watcher.communicate(timeout=10)[0]

    assert watcher.returncode == 130, first + rest
    assert f"relightq batch status {batch_id} --watch" in rest
    assert "Traceback" not in rest
    assert api.get(f"/v1/batches/{batch_id}").json()["status"] in ("queued", "running")

    cancelled = run(services, tenant, "cancel", batch_id)
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled" in cancelled.output
    batch = api.get(f"/v1/batches/{batch_id}").json()
    assert batch["status"] == "cancelled" and batch["counts"]["cancelled"] > 50

    watched = run(services, tenant, "status", batch_id, "--watch")
    assert watched.exit_code == 1, watched.output
    assert "was cancelled" in watched.output


def test_retry_failed_runs_the_failures_again(
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
    tmp_path: Path,
) -> None:
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    urls = catalog(2, "cli-retry")
    source = write_csv(tmp_path / "retry.csv", [{"subject_image": u} for u in urls])

    failed = run(services, tenant, "submit", str(source), "--prompt", "x", "--watch")

    assert failed.exit_code == 0, failed.output  # completed, with failures shown
    assert "2 items failed" in failed.output and "--errors" in failed.output
    batch_id = batch_id_of(failed)

    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    retried = run(services, tenant, "retry-failed", batch_id)
    assert retried.exit_code == 0, retried.output
    assert "Retrying 2 failed items" in retried.output

    watched = run(services, tenant, "status", batch_id, "--watch")
    assert watched.exit_code == 0, watched.output
    assert api.get(f"/v1/batches/{batch_id}").json()["counts"]["succeeded"] == 2

    again = run(services, tenant, "retry-failed", batch_id)
    assert again.exit_code == 0 and "no failed items" in again.output


def test_budget_caps_a_batch_and_raising_it_lets_the_batch_finish(
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
    tmp_path: Path,
) -> None:
    simulator.post("/admin/config", json={"latency": 0.1}).raise_for_status()
    [url] = catalog(1, "cli-budget")
    source = write_csv(
        tmp_path / "c.csv", [{"subject_image": url, "external_id": f"B-{n}"} for n in range(6)]
    )
    submitted = run(services, tenant, "submit", str(source), "--prompt", "x", "--budget", "0.05")
    batch_id = batch_id_of(submitted)
    assert wait_batch(api, batch_id, "waiting")["waiting_reason"] == "batch credit budget spent"

    assert run(services, tenant, "budget", batch_id, "lots").exit_code != 0
    raised = run(services, tenant, "budget", batch_id, "none")

    assert raised.exit_code == 0, raised.output
    assert wait_batch(api, batch_id, "completed")["counts"]["succeeded"] == 6


# Watching through an outage -----------------------------------------------------------------


def test_submit_watch_waits_out_a_dropped_connection_a_503_and_a_429(
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
    tmp_path: Path,
) -> None:
    urls = catalog(2, "cli-outage")
    source = write_csv(tmp_path / "catalog.csv", [{"subject_image": url} for url in urls])
    faults = [
        DROP,  # the API restarting: no Retry-After, so the fallback backoff (1-2 s)
        api_error(503, "database_unavailable", retry_after="1"),
        # At the third retry the fallback would be 4-5 s: "1 s" proves Retry-After is read.
        api_error(429, "rate_limited", retry_after="1"),
    ]

    with faulty_proxy(services.api, faults) as proxy:
        result = run(
            services,
            tenant,
            "submit",
            str(source),
            "--prompt",
            "x",
            "--watch",
            api_url=url_of(proxy),
        )

    assert result.exit_code == 0, result.output
    assert "every item succeeded" in result.stdout
    batch = api.get(f"/v1/batches/{batch_id_of(result)}").json()
    assert batch["status"] == "completed" and batch["counts"]["succeeded"] == 2
    notices = result.stderr
    assert "could not talk to the API (RemoteProtocolError" in notices, notices
    assert "API answered 503 database_unavailable; retrying in 1 s" in notices, notices
    assert "API answered 429 rate_limited; retrying in 1 s" in notices, notices
    assert "API answers again" in notices, notices
    assert not re.search(r"^Error:", notices, re.MULTILINE)  # notices, not errors
    assert "retrying" not in result.stdout  # stdout stays the batch's
    # The Retry-After was waited out, not just printed; then the watch polled on.
    assert proxy.gap_after("503") >= 0.95 and proxy.gap_after("429") >= 0.95
    assert [what for _, what in proxy.log[:4]] == ["POST forwarded", "drop", "503", "429"]
    assert proxy.log[-1][1] == "GET forwarded"


def test_status_watch_starting_in_an_outage_waits_then_reports_the_cancellation(
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
    tmp_path: Path,
) -> None:
    simulator.post("/admin/config", json={"latency": 0.5}).raise_for_status()
    [url] = catalog(1, "cli-outage-cancel")
    source = write_csv(tmp_path / "c.csv", [{"subject_image": url}] * 20)
    batch_id = batch_id_of(run(services, tenant, "submit", str(source), "--prompt", "x"))
    api.post(f"/v1/batches/{batch_id}/cancel").raise_for_status()
    # A gateway's page while the API behind it restarts: no JSON, no Retry-After.
    gateway = Fault(502, b"<html>502 Bad Gateway</html>", {"Content-Type": "text/html"})

    with faulty_proxy(services.api, [gateway]) as proxy:
        result = run(services, tenant, "status", batch_id, "--watch", api_url=url_of(proxy))

    assert result.exit_code == 1, result.output
    assert "was cancelled" in result.stdout
    # No Retry-After: the fallback backoff, 1-2 s at the first retry.
    assert re.search(r"API answered 502; retrying in [12](\.\d)? s", result.stderr), result.stderr
    assert proxy.gap_after("502") >= 0.95


def test_a_watch_gives_up_on_a_long_outage_with_its_own_exit_code(
    services: Services, tenant: TenantKey
) -> None:
    batch_id = str(uuid.uuid4())
    started = time.monotonic()

    result = run(
        services,
        tenant,
        *("status", batch_id, "--watch", "--give-up-after", "1"),
        api_url="http://127.0.0.1:9",  # nothing listens: connection refused
    )

    assert result.exit_code == GAVE_UP == 75, result.output
    assert "could not talk to the API (ConnectError" in result.stderr
    assert "gave up watching after 1 s of outage" in result.stderr
    assert f"relightq batch status {batch_id} --watch" in result.stderr
    assert "Traceback" not in result.output
    assert time.monotonic() - started >= 1  # it did wait, and retried
    assert result.stderr.count("retrying in") >= 1
