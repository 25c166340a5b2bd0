"""The one result schema: records round-trip, land under their machine, and bad ones are named."""

import json

import pytest

from streamfer import results


def test_record_round_trips_under_its_machine(tmp_path):
    rec = results.make("server_ramp", {"phones_at_p99_100ms": 12}, {"rows": [1, 2]},
                       command="python -m bench.server --ramp")
    path = results.write(tmp_path, rec)
    assert path == tmp_path / rec["machine"]["id"] / "server_ramp.json"
    back = results.read(path)
    assert back["figures"] == {"phones_at_p99_100ms": 12}
    assert back["command"] == "python -m bench.server --ramp"
    assert back["commit"] and back["date"].endswith("Z")
    assert results.read_all(tmp_path) == {(rec["machine"]["id"], "server_ramp"): back}


def test_bad_records_are_refused_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="result name"):
        results.make("Server Ramp!", {})
    bad = tmp_path / "m" / "x.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"schema": "streamfer-result/1", "name": "x"}))
    with pytest.raises(ValueError, match="missing command, commit, date, machine, figures"):
        results.read(bad)


@pytest.mark.parametrize("cpu,cpus,gpu,want", [
    ("AMD EPYC", 2, None, "amd-epyc-2cpu"),
    ("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", 2, None, "intel-xeon-2cpu"),
    ("AMD EPYC 9654", 16, "NVIDIA H200", "nvidia-h200"),
])
def test_machine_ids(cpu, cpus, gpu, want):
    assert results.machine_id(cpu, cpus, gpu) == want
