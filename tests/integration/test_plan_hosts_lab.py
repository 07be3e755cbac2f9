"""Lab tests of `ddmctl plan`, `migrate --dry-run` and `ddmctl hosts check`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.integration.operator_support import ddmctl, host_state
from tests.lab import Lab, LabHost
from tests.lab.isolation import IsolatedEnv
from tests.lab.prereq import tool
from tests.lab.resources import LabResources
from tests.lab.tree import File, RandomFile, snapshot_volume_tree, write_volume_tree


def test_plan_reports_and_changes_nothing(
    h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv, resources: LabResources
) -> None:
    fresh = resources.create_volume(h1, labels={"app": "db"})
    write_volume_tree(h1, fresh, {"data.bin": RandomFile(512 * 1024, seed=3),
                                  "etc/conf": File(b"x = 1\n")})
    taken = resources.create_volume(h1)
    resources.create_volume(h2, taken)
    before = {"h1": host_state(h1), "h2": host_state(h2)}
    tree_before = snapshot_volume_tree(h1, fresh)

    outcome = ddmctl("plan", "--from", "h1", "--to", "h2", "--volume", fresh,
                     "--volume", taken, "--probe-size", "1", "--json")

    assert outcome.status == 1, outcome.stderr
    plan = outcome.json()
    assert plan["plan_version"] == 1
    assert [entry["kind"] for entry in plan["objects"]] == ["volume", "volume"]
    first, second = plan["objects"]
    assert first["source"] == fresh
    assert first["action"] == "create"
    assert first["size_bytes"] >= 512 * 1024
    # Lab hosts log in as root and have GNU tar, so the host data path is chosen.
    assert first["data_path"] == "host"
    assert "content" in first["preserves"]
    assert "labels" in first["preserves"]
    assert second["action"] == "none"
    assert [conflict["error"] for conflict in plan["conflicts"]] == ["TargetExists"]
    assert plan["conflicts"][0]["object"] == taken
    assert [step["order"] for step in plan["steps"]] == list(range(1, len(plan["steps"]) + 1))
    assert plan["steps"][0]["phase"] == "prepare"
    assert plan["steps"][-1]["phase"] == "cleanup"
    assert plan["link"]["source"]["read_bytes_per_second"] > 0
    assert plan["link"]["target"]["write_bytes_per_second"] > 0
    assert plan["estimate"]["seconds"] > 0
    assert plan["ok"] is False

    assert {"h1": host_state(h1), "h2": host_state(h2)} == before
    assert snapshot_volume_tree(h1, fresh) == tree_before


def test_dry_run_prints_same_plan(
    h1: LabHost, h2: LabHost, isolated_env: IsolatedEnv, resources: LabResources
) -> None:
    volume = resources.create_volume(h1)
    before = {"h1": host_state(h1), "h2": host_state(h2)}

    planned = ddmctl("plan", "--from", "h1", "--to", "h2", "--volume", f"{volume}:{volume}-b",
                     "--json")
    dry_run = ddmctl("migrate", "--from", "h1", "--to", "h2", "--volume",
                     f"{volume}:{volume}-b", "--dry-run", "--json")

    assert planned.status == 0, planned.stderr
    assert dry_run.status == 0, dry_run.stderr
    measured = ("link", "estimate", "engines")
    assert {key: value for key, value in planned.json().items() if key not in measured} == \
        {key: value for key, value in dry_run.json().items() if key not in measured}
    text = ddmctl("plan", "--from", "h1", "--to", "h2", "--volume", volume, "--probe-size", "0")
    assert text.status == 0, text.stderr
    assert f"volume {volume} -> {volume}:" in text.stdout
    assert "estimate: no estimate" in text.stdout
    assert {"h1": host_state(h1), "h2": host_state(h2)} == before


def test_hosts_check_lab_hosts_usable(lab: Lab, isolated_env: IsolatedEnv) -> None:
    outcome = ddmctl("hosts", "check", "--json")

    assert outcome.status == 0, outcome.stderr
    results = {result["host"]: result for result in outcome.json()}
    assert set(results) == {"h1", "h2"}
    for result in results.values():
        assert result["usable"] is True
        assert result["host_key"] == "ok"
        assert result["api_version"].startswith("1.")
        assert result["storage_driver"]
        assert result["arch"]
        assert result["volumes_free_bytes"] > 0
        assert abs(result["clock_skew_seconds"]) < 60
        assert result["host_tar"]["available"] is True
        assert result["host_tar"]["gnu_tar"].startswith("tar (GNU tar)")
        assert result["rights"]["root"] is True
        assert result["rights"]["user"] == "root"

    table = ddmctl("hosts", "check", "h1")
    assert table.status == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["HOST", "USABLE", "HOST"]
    assert table.stdout.splitlines()[1].split()[:3] == ["h1", "yes", "ok"]


def _write_config(lab: Lab, path: Path, url: str, *, identity_file: Path | None = None,
                  known_hosts: Path | None = None) -> Path:
    path.write_text(
        "version: 1\n"
        f"identity_file: {identity_file or lab.identity_file}\n"
        f"known_hosts: {known_hosts or lab.known_hosts}\n"
        "hosts:\n"
        f"  h1: {{url: '{lab.host('h1').ssh_url}'}}\n"
        f"  broken: {{url: '{url}'}}\n"
    )
    return path


def test_hosts_check_unknown_host_key(lab: Lab, isolated_env: IsolatedEnv,
                                      tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config = _write_config(lab, tmp_path / "c.yaml", lab.host("h2").ssh_url, known_hosts=empty)

    outcome = ddmctl("--config", str(config), "hosts", "check", "broken", "--json")

    assert outcome.status == 4
    (result,) = outcome.json()
    assert result["usable"] is False
    assert result["host_key"] == "unknown"
    assert "unknown SSH host key" in result["error"]


def test_hosts_check_worst_failure_wins(lab: Lab, isolated_env: IsolatedEnv,
                                        tmp_path: Path) -> None:
    wrong_key = tmp_path / "wrong_key"
    subprocess.run([tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)],
                   check=True, capture_output=True)
    config = _write_config(lab, tmp_path / "c.yaml", lab.host("h2").ssh_url,
                           identity_file=wrong_key)

    outcome = ddmctl("--config", str(config), "hosts", "check", "broken")

    assert outcome.status == 5, outcome.stderr
    rows = {line.split()[0]: line for line in outcome.stdout.splitlines()[1:]}
    assert rows["broken"].split()[1:3] == ["no", "(5)"]
    assert "broken: SSH server" in outcome.stderr


def test_hosts_check_refused_connection(lab: Lab, isolated_env: IsolatedEnv,
                                        tmp_path: Path) -> None:
    # Port 1 on the lab host's loopback address: nothing listens there.
    address = lab.host("h1").address
    config = _write_config(lab, tmp_path / "c.yaml", f"ssh://root@{address}:1")

    outcome = ddmctl("--config", str(config), "hosts", "check", "h1", "broken", "--json")

    assert outcome.status == 3, outcome.stderr
    results = {result["host"]: result for result in outcome.json()}
    assert results["h1"]["usable"] is True
    assert results["broken"]["usable"] is False
    assert results["broken"]["reachable"] is False
    assert results["broken"]["exit_status"] == 3
