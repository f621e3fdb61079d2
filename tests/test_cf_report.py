"""tools.cf_report dates its report with the measurement, not with the day it was re-rendered."""

import datetime
import json
import platform
from pathlib import Path

from tools import cf_report

COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "results" / "cf_public_datasets.json"


def _committed(tmp_path: Path, drop: tuple[str, ...] = ()) -> tuple[dict, Path]:
    results = {k: v for k, v in json.loads(COMMITTED.read_text()).items() if k not in drop}
    out = tmp_path / "cf"
    out.with_suffix(".json").write_text(json.dumps(results))
    return results, out


def test_render_only_keeps_the_measurement_date_and_host(tmp_path):
    results, out = _committed(tmp_path)
    results["measured"] = {"date": "2001-02-03", "machine": "sparc", "cpus": 64}
    out.with_suffix(".json").write_text(json.dumps(results))
    assert cf_report.main(["--render-only", "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    elapsed = f"{results['elapsed_s']:.0f} s"  # the committed run's
    assert f"(2001-02-03, sparc, 64 CPUs, {elapsed})" in md and datetime.date.today().isoformat() not in md


def test_a_report_measured_before_the_date_was_recorded_says_so(tmp_path):
    results, out = _committed(tmp_path, drop=("measured",))
    cf_report.main(["--render-only", "--out", str(out)])
    assert f"(date and host not recorded, {results['elapsed_s']:.0f} s)" in out.with_suffix(".md").read_text()


def test_a_measurement_records_its_date_and_host(tmp_path, monkeypatch):
    results, out = _committed(tmp_path, drop=("measured", "elapsed_s"))
    monkeypatch.setattr(cf_report, "run", lambda seeds: results)  # the 2-minute evaluation itself is not under test
    cf_report.main(["--out", str(out)])
    measured = json.loads(out.with_suffix(".json").read_text())["measured"]
    assert measured["date"] == datetime.date.today().isoformat() and measured["machine"] == platform.machine()
    assert f"({measured['date']}, {platform.machine()}, " in out.with_suffix(".md").read_text()
