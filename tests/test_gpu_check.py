"""benchmarks/gpu_check.py: the dry run CI runs, and the run's own machinery (wheels, time limits,
skipped parts, the output layout) exercised with stand-in parts, without a GPU."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()
HEADLINE = {"N": 256, "T": 128, "P": 196, "D": 512}


def make_wheel(folder: Path, name: str, version: str, requires=(), module: str | None = None) -> Path:
    """A minimal installable pure-Python wheel."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                      + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    if module:
        files[f"{module}.py"] = "VALUE = 1\n"
    files[f"{dist}.dist-info/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{dist}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in files.items():
            archive.writestr(member, text)
    return path


def read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


# ----------------------------------------------------------------------------------------------
# The dry run, for real: what CI runs
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One real dry run (it collects the GPU tests in a child), with no wheels at hand."""
    out = tmp_path_factory.mktemp("dry-run")
    no_wheels = tmp_path_factory.mktemp("no-wheels")
    status = gpu_check.main(["--dry-run", "--wheel-dir", str(no_wheels), str(out)])
    return status, out


def test_dry_run_passes_without_wheels_and_says_how_to_fetch_them(dry_run):
    status, out = dry_run
    summary = read(out, "summary.json")
    assert status == 0, summary["problems"]
    assert summary["problems"] == []
    pins = gpu_check.read_wheel_list()
    assert "open-clip-torch" in pins
    assert sorted(summary["wheels"]["missing"]) == sorted(f"{n}=={v}" for n, v in pins.items())
    log = (out / "gpu_check.log").read_text()
    assert "missing wheels" in log and gpu_check.FETCH_COMMAND in log


def test_dry_run_lists_the_gpu_tests_and_the_shapes(dry_run):
    _, out = dry_run
    tests = read(out, "tests.json")["tests"]
    assert "tests/test_kernel.py::test_no_similarity_sized_buffer_on_gpu" in tests
    full_size = [t for t in tests if "test_full_size_matches_reference_on_gpu" in t]
    assert len(full_size) >= 5 and any("64x128x196x512" in t for t in full_size)
    assert all(t.startswith("tests/test_kernel.py::") for t in tests)  # only the gpu-marked module travels

    kernel = read(out, "kernel.json")
    assert "--check" in kernel["command"] and "--time-limit" in kernel["command"]
    shapes = kernel["plan"]["shapes"]
    assert {k: shapes[0][k] for k in "NTPD"} == HEADLINE and "compile" in shapes[0]["impls"]
    assert len(shapes) > 1 and all(s["impls"][-1] == "triton" for s in shapes)
    e2e = read(out, "e2e.json")["plan"]
    assert e2e["kind"] == "e2e" and e2e["model"] == "ViT-B-16" and e2e["batch"] == 256


def test_dry_run_writes_exactly_the_files_a_run_writes(dry_run):
    _, out = dry_run
    written = {p.name for p in out.iterdir()}
    assert written == gpu_check.OUTPUT_NAMES
    assert len(written) <= gpu_check.MAX_FILES
    assert gpu_check.layout_problems(out) == []
    # Everything the GPU parts import is carried or on the GPU machine's image.
    imported = {gpu_check.normalize(d) for d in read(out, "summary.json")["imported_distributions"]}
    assert {"torch", "open-clip-torch", "pytest"} <= imported


# ----------------------------------------------------------------------------------------------
# The dry run's checks, with the test collection stood in for
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def canned_audit(monkeypatch):
    """Replace the slow child (collecting the GPU tests) by a given result."""
    result = {"rc": 0, "tests": ["tests/test_kernel.py::test_x"], "distributions": ["torch", "open_clip_torch"]}
    monkeypatch.setattr(gpu_check, "audit_imports", lambda files, log: result)
    return result


def test_require_wheels_makes_missing_wheels_an_error(tmp_path, canned_audit):
    status = gpu_check.main(["--dry-run", "--require-wheels", "--wheel-dir", str(tmp_path / "none"),
                             str(tmp_path / "out")])
    problems = read(tmp_path / "out", "summary.json")["problems"]
    assert status == 1
    assert any("open-clip-torch==" in p and gpu_check.FETCH_COMMAND in p for p in problems)


def test_an_import_neither_carried_nor_on_the_image_is_a_problem(tmp_path, canned_audit):
    canned_audit["distributions"].append("webdataset")
    status = gpu_check.main(["--dry-run", "--wheel-dir", str(tmp_path / "none"), str(tmp_path / "out")])
    problems = read(tmp_path / "out", "summary.json")["problems"]
    assert status == 1 and len(problems) == 1 and "webdataset" in problems[0]


def test_no_gpu_test_is_a_problem(tmp_path, canned_audit):
    canned_audit["tests"] = []
    assert gpu_check.main(["--dry-run", "--wheel-dir", str(tmp_path / "none"), str(tmp_path / "out")]) == 1


def test_wheels_are_resolved_with_their_requirements(tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "alpha", "1.0", requires=["torch>=2", "beta", 'colorama; sys_platform == "win32"'])
    make_wheel(wheels, "beta", "2.0", requires=["braceexpand", "pytest; extra == 'test'"])
    make_wheel(wheels, "beta", "1.9")  # a second version would stop the whole install
    found = gpu_check.resolve_wheels({"alpha": "1.0", "beta": "2.0", "gamma": "3.0"}, wheels)
    assert set(found["present"]) == {"alpha", "beta"}
    assert found["missing"] == ["gamma==3.0"]
    # torch is on the image, beta is carried, colorama is Windows-only, pytest only an extra.
    assert len(found["problems"]) == 2
    assert any("requires braceexpand" in p for p in found["problems"])
    assert any("beta-1.9" in p for p in found["problems"])


def test_install_puts_the_missing_wheels_in_the_target(tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "gpu-check-probe", "1.0", module="gpu_check_probe")
    log = gpu_check.Log(tmp_path / "log")
    done = gpu_check.install_wheels({"gpu-check-probe": "1.0"}, wheels, tmp_path / "site", log)
    assert "error" not in done, done
    assert done["installed"] == ["gpu-check-probe"]
    assert (tmp_path / "site" / "gpu_check_probe.py").is_file()
    missing = gpu_check.install_wheels({"gpu-check-probe": "2.0"}, wheels, tmp_path / "site2", log)
    assert missing["missing"] == ["gpu-check-probe==2.0"] and gpu_check.FETCH_COMMAND in missing["error"]
    log.close()


def test_layout_problems_are_what_would_not_come_back(tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir()
    for name in sorted(gpu_check.OUTPUT_NAMES):
        (ok / name).write_text("{}")
    assert gpu_check.layout_problems(ok) == []

    bad = tmp_path / "bad"
    (bad / "a" / "b" / "c").mkdir(parents=True)
    for k in range(8):
        (bad / f"f{k}.json").write_text("{}")
    (bad / "a" / "b" / "c" / "deep.json").write_text("{}")
    (bad / "a" / "odd name.json").write_text("{}")
    problems = gpu_check.layout_problems(bad)
    assert any("10 files" in p for p in problems)
    assert any("deep.json" in p and "folders down" in p for p in problems)
    assert any("odd name.json" in p for p in problems)


# ----------------------------------------------------------------------------------------------
# The run itself, with stand-in parts
# ----------------------------------------------------------------------------------------------

STAND_IN_TESTS = '''
import pytest

@pytest.mark.gpu
def test_passes(record_property):
    record_property("peak extra bytes", 123)

@pytest.mark.gpu
def test_fails():
    assert 1 == 2

def test_not_gpu():
    pass
'''

# Writes a figure, then ignores SIGINT and hangs: only SIGKILL ends it.
STAND_IN_KERNEL = '''
import json, signal, sys, time
json.dump({"rows": [{"N": 1, "triton_us": 2.0}]}, open(sys.argv[1], "w"))
signal.signal(signal.SIGINT, signal.SIG_IGN)
time.sleep(120)
'''


def test_parts_run_under_their_limits_and_short_time_skips_a_part(tmp_path, monkeypatch):
    test_file = tmp_path / "test_stand_in.py"
    test_file.write_text(STAND_IN_TESTS)
    real_command = gpu_check.part_command

    def command(part, out, scratch, limit_s):
        if part.name == "kernel":
            return [sys.executable, "-c", STAND_IN_KERNEL, str(out / part.json_name)]
        return real_command(part, out, scratch, limit_s)  # the real pytest command line

    monkeypatch.setattr(gpu_check, "part_command", command)
    monkeypatch.setattr(gpu_check, "gpu_test_files", lambda: [str(test_file)])
    monkeypatch.setattr(gpu_check, "read_wheel_list", lambda path=None: {})
    monkeypatch.setattr(gpu_check, "GRACE_S", 1)
    env = {"device": "Stand-in GPU", "driver": "1.0", "torch": "t", "triton": "r"}
    monkeypatch.setattr(gpu_check, "probe_environment", lambda env_, log: dict(env))

    out = tmp_path / "out"
    args = gpu_check.parse_args([str(out), "--budget-s", "300"])
    args.parts = [gpu_check.Part("tests", 120, 1, "stand-in tests"),
                  gpu_check.Part("kernel", 3, 1, "stand-in benchmark that hangs"),
                  gpu_check.Part("e2e", 60, 10_000, "needs more than the budget")]
    status = gpu_check.run_check(args)

    assert status == 1
    summary = read(out, "summary.json")
    assert summary["parts"]["tests"]["status"] == "failed" and summary["parts"]["tests"]["returncode"] == 1
    assert summary["parts"]["kernel"]["status"] == "timeout"
    assert summary["parts"]["kernel"]["seconds"] < 30
    assert [s["part"] for s in summary["skipped"]] == ["e2e"]

    tests = read(out, "tests.json")
    assert tests["device"] == "Stand-in GPU" and tests["check"]["status"] == "failed"
    assert tests["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 0}
    passed = next(t for t in tests["tests"] if t["id"].endswith("test_passes"))
    assert passed["figures"] == {"peak extra bytes": "123"}
    kernel = read(out, "kernel.json")
    assert kernel["rows"] == [{"N": 1, "triton_us": 2.0}] and kernel["check"]["status"] == "timeout"
    assert read(out, "e2e.json")["status"] == "skipped"

    log = (out / "gpu_check.log").read_text()
    assert "SIGKILL" in log and "skipped e2e" in log
    assert {p.name for p in out.iterdir()} == gpu_check.OUTPUT_NAMES
