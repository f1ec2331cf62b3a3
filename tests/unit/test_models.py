"""openeyesd.models and `openeyesctl models`: fetch from a local HTTP server, resume, verify.

Everything is offline: files are served by an ``http.server`` on 127.0.0.1 in a thread, and a
fake opener stands in for a machine without network. Downloads are a few KiB.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.error
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from openeyesd import doctor, models
from openeyesd.cli import main
from openeyesd.config import Config
from openeyesd.models import ModelError, ModelFile, ModelSpec

WEIGHTS = bytes(range(256)) * 40  # 10 KiB, several read chunks of the handler
CONFIG_JSON = b'{"layers": 3}\n'


@dataclass
class FakeServer:
    """Serves ``files`` (path -> bytes) with Range support and records every request."""

    files: dict[str, bytes]
    honour_range: bool = True
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    bytes_sent: int = 0
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.lstrip("/")
            range_header = self.headers.get("Range")
            server.requests.append((path, range_header))
            body = server.files.get(path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if range_header and server.honour_range:
                start = int(range_header.removeprefix("bytes=").rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])
            server.bytes_sent += len(body) - start

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeServer]:
    monkeypatch.setattr(models, "TIMEOUT_S", 5.0)  # a hung test fails in seconds, not minutes
    fake = FakeServer({"weights.bin": WEIGHTS, "config.json": CONFIG_JSON})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield fake
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_spec(server: FakeServer, *, name: str = "fake", commercial: bool = True,
              pin_config: bool = True, role: models.Role = "restorer") -> ModelSpec:
    return ModelSpec(
        name=name, role=role,
        files=(
            ModelFile("weights.bin", server.url("weights.bin"), sha(WEIGHTS), len(WEIGHTS)),
            ModelFile("sub/config.json", server.url("config.json"),
                      sha(CONFIG_JSON) if pin_config else None),
        ),
        source="http://127.0.0.1/", licence="Test-Licence", commercial_use_allowed=commercial,
        vram_gb=0.1, download_gb=0.0, notes="test model",
    )


@pytest.fixture
def cfg(make_config: Callable[..., Config], tmp_path: Path) -> Config:
    return make_config(models={"dir": str(tmp_path / "models")})


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []

    def __call__(self, file: ModelFile, done: int, total: int | None) -> None:
        self.calls.append((file.relative_path, done, total))


# --- fetch -----------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_reports_progress(cfg: Config, server: FakeServer) -> None:
    spec = fake_spec(server)
    progress = Recorder()
    result = models.fetch(cfg, spec, progress=progress)
    root = cfg.models.dir / "fake"
    assert (root / "weights.bin").read_bytes() == WEIGHTS
    assert (root / "sub" / "config.json").read_bytes() == CONFIG_JSON
    assert result.downloaded == ["weights.bin", "sub/config.json"]
    assert not list(root.rglob("*.part"))
    assert ("weights.bin", len(WEIGHTS), len(WEIGHTS)) in progress.calls
    assert progress.calls[0] == ("weights.bin", 0, len(WEIGHTS))
    assert models.verify(cfg, spec) == [] and models.is_enabled(cfg, spec)

    again = models.fetch(cfg, spec, progress=Recorder())  # idempotent: nothing re-downloaded
    assert again.already_present == ["weights.bin", "sub/config.json"]
    assert len(server.requests) == 2


def test_fetch_resumes_a_partial_download(cfg: Config, server: FakeServer) -> None:
    spec = fake_spec(server)
    part = cfg.models.dir / "fake" / "weights.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(WEIGHTS[:3000])
    models.fetch(cfg, spec, progress=Recorder())
    assert ("weights.bin", "bytes=3000-") in server.requests
    assert server.bytes_sent == len(WEIGHTS) - 3000 + len(CONFIG_JSON)
    assert (cfg.models.dir / "fake" / "weights.bin").read_bytes() == WEIGHTS


def test_fetch_starts_over_when_the_server_ignores_range(cfg: Config,
                                                         server: FakeServer) -> None:
    server.honour_range = False
    part = cfg.models.dir / "fake" / "weights.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(WEIGHTS[:3000])
    models.fetch(cfg, fake_spec(server), progress=Recorder())
    assert (cfg.models.dir / "fake" / "weights.bin").read_bytes() == WEIGHTS


def test_corrupt_download_enables_nothing_and_deletes_the_part(cfg: Config,
                                                               server: FakeServer) -> None:
    server.files["weights.bin"] = WEIGHTS[::-1]  # same size, different bytes
    spec = fake_spec(server)
    with pytest.raises(ModelError) as caught:
        models.fetch(cfg, spec, progress=Recorder())
    assert caught.value.kind == "sha_mismatch"
    assert "does not match" in str(caught.value)
    root = cfg.models.dir / "fake"
    assert not (root / "weights.bin").exists()
    assert not (root / "weights.bin.part").exists()
    assert not models.is_enabled(cfg, spec)


def test_non_commercial_model_is_refused_unless_allowed(
    make_config: Callable[..., Config], tmp_path: Path, server: FakeServer
) -> None:
    spec = fake_spec(server, commercial=False)
    refusing = make_config(models={"dir": str(tmp_path / "models")})
    with pytest.raises(ModelError) as caught:
        models.fetch(refusing, spec, progress=Recorder())
    assert caught.value.kind == "licence_refused"
    assert "allow_non_commercial" in caught.value.fix
    assert server.requests == []
    allowing = make_config(models={"dir": str(tmp_path / "models"), "allow_non_commercial": True})
    models.fetch(allowing, spec, progress=Recorder())
    assert models.verify(allowing, spec) == []
    assert [p.kind for p in models.verify(refusing, spec)] == ["licence_refused"]


def test_offline_error_says_how_to_install_by_hand(cfg: Config, server: FakeServer) -> None:
    def offline(request: Any, timeout: float) -> Any:
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    with pytest.raises(ModelError) as caught:
        models.fetch(cfg, fake_spec(server), progress=Recorder(), opener=offline)
    error = caught.value
    assert error.kind == "network"
    assert "Network is unreachable" in str(error) and server.url("weights.bin") in str(error)
    assert f"copy the files into {cfg.models.dir / 'fake'} by hand" in error.fix
    assert "openeyesctl models verify fake" in error.fix


def test_http_error_names_the_status(cfg: Config, server: FakeServer) -> None:
    del server.files["config.json"]
    with pytest.raises(ModelError, match="HTTP 404") as caught:
        models.fetch(cfg, fake_spec(server), progress=Recorder())
    assert caught.value.kind == "download_failed"
    assert (cfg.models.dir / "fake" / "weights.bin").exists()  # the verified file stays


def test_unpinned_file_needs_trust_on_first_use_which_records_a_pin(
    cfg: Config, server: FakeServer
) -> None:
    spec = fake_spec(server, pin_config=False)
    with pytest.raises(ModelError, match="no pinned hash") as caught:
        models.fetch(cfg, spec, progress=Recorder())
    assert "--trust-on-first-use" in caught.value.fix
    assert server.requests == []

    result = models.fetch(cfg, spec, progress=Recorder(), trust_on_first_use=True)
    assert result.pinned_on_first_use == ["sub/config.json"]
    pins = json.loads((cfg.models.dir / models.PINS_FILE).read_text())
    assert pins["fake/sub/config.json"]["sha256"] == sha(CONFIG_JSON)
    assert models.verify(cfg, spec) == []

    (cfg.models.dir / "fake" / "sub" / "config.json").write_bytes(b'{"layers": 4}\n')
    assert [p.kind for p in models.verify(cfg, spec, use_cache=False)] == ["sha_mismatch"]


# --- verify ----------------------------------------------------------------------------------


def install(cfg: Config, spec: ModelSpec, weights: bytes = WEIGHTS) -> Path:
    root = models.model_dir(cfg, spec)
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "weights.bin").write_bytes(weights)
    (root / "sub" / "config.json").write_bytes(CONFIG_JSON)
    return root


def test_verify_reports_missing_size_and_hash(cfg: Config, server: FakeServer) -> None:
    spec = fake_spec(server)
    missing = models.verify(cfg, spec)
    assert [p.kind for p in missing] == ["missing", "missing"]
    assert missing[0].fix == "openeyesctl models fetch fake"

    root = install(cfg, spec, WEIGHTS[:-1])
    assert [p.kind for p in models.verify(cfg, spec)] == ["size_mismatch"]
    (root / "weights.bin").write_bytes(WEIGHTS[::-1])
    problems = models.verify(cfg, spec)
    assert [p.kind for p in problems] == ["sha_mismatch"]
    assert "does not match the pinned" in problems[0].message


def test_verify_without_any_hash_cannot_verify(cfg: Config, server: FakeServer) -> None:
    spec = fake_spec(server, pin_config=False)
    install(cfg, spec)
    problems = models.verify(cfg, spec)
    assert [(p.kind, p.file) for p in problems] == [("no_pinned_hash", "sub/config.json")]
    assert "no pinned hash: cannot verify" in problems[0].message
    assert "--trust-on-first-use" in problems[0].fix


def test_find_lists_known_names() -> None:
    assert models.find("gfpgan-1.4").role == "restorer"
    with pytest.raises(ModelError, match=r"known models: buffalo_l, sdxl-inpaint-0\.1"):
        models.find("gfpgan-2")


def test_registry_is_consistent() -> None:
    names = [spec.name for spec in models.REGISTRY]
    assert len(names) == len(set(names))
    for spec in models.REGISTRY:
        paths = [file.relative_path for file in spec.files]
        assert len(paths) == len(set(paths)), spec.name
        for file in spec.files:
            assert file.url.startswith("https://"), file.url
            assert file.sha256 is None or (len(file.sha256) == 64
                                           and file.sha256 == file.sha256.lower())
    # the defaults in config.py must name registry entries of the right role
    assert models.find(Config.model_fields["generation"].default.model).role == "inpaint"
    assert models.find(Config.model_fields["restoration"].default.model).role == "restorer"


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., Path]:
    """Writes a config.toml (extra TOML appended) and returns its path."""

    def write(extra: str = "") -> Path:
        (tmp_path / "incoming").mkdir(exist_ok=True)
        path = tmp_path / "config.toml"
        path.write_text('[[watch]]\npath = "incoming"\n\n[output]\npath = "out"\n\n'
                        '[state]\ndir = "state"\nmin_free_mb = 0\n' + extra, encoding="utf-8")
        return path

    return write


def run(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, Any, str]:
    code = main(["--config", str(config), *args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def test_models_list_json(cli: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, report, _ = run(capsys, cli(), "models", "list")
    assert code == 0
    entries = {entry["name"]: entry for entry in report["models"]}
    assert set(entries) == {spec.name for spec in models.REGISTRY}
    gfpgan = entries["gfpgan-1.4"]
    assert gfpgan["status"] == "missing" and gfpgan["size_bytes"] == 348632874
    assert gfpgan["file_list"][0]["relative_path"] == "GFPGANv1.4.pth"
    assert gfpgan["commercial_use_allowed"] is True and gfpgan["in_use"] == ["restoration.model"]
    assert entries["codeformer"]["status"] == "refused"  # allow_non_commercial defaults false
    assert entries["sdxl-inpaint-0.1"]["size_bytes"] is None  # not every size is published


def test_models_verify_exit_codes(cli: Callable[..., Path], server: FakeServer,
                                  capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config_path = cli('\n[models]\ndir = "models"\n')
    spec = fake_spec(server)
    monkeypatch.setattr(models, "REGISTRY", (*models.REGISTRY, spec))
    code, report, _ = run(capsys, config_path, "models", "verify", "fake")
    assert code == 1 and report["models"][0]["status"] == "missing"

    root = config_path.parent / "models" / "fake"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(WEIGHTS)
    (root / "sub" / "config.json").write_bytes(CONFIG_JSON)
    code, report, _ = run(capsys, config_path, "models", "verify", "fake")
    assert code == 0 and report["models"][0]["ok"] is True

    code, report, _ = run(capsys, config_path, "models", "verify", "nope")
    assert code == 2 and report["error"]["kind"] == "unknown_model"
    # Without a name: the models the config uses (none installed here) fail.
    code, report, _ = run(capsys, config_path, "models", "verify")
    assert code == 1
    assert {"fake", "gfpgan-1.4", "buffalo_l"} <= {e["name"] for e in report["models"]}


def test_models_fetch_cli(cli: Callable[..., Path], server: FakeServer,
                          capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    config_path = cli()
    spec = fake_spec(server, pin_config=False)
    monkeypatch.setattr(models, "REGISTRY", (spec,))
    code, report, _ = run(capsys, config_path, "models", "fetch", "fake")
    assert code == 1 and report["error"]["kind"] == "no_pinned_hash"

    code, report, err = run(capsys, config_path, "models", "fetch", "fake",
                            "--trust-on-first-use")
    assert code == 0
    assert report["downloaded"] == ["weights.bin", "sub/config.json"]
    assert report["pinned_on_first_use"] == ["sub/config.json"]
    assert "trust on first use" in report["details"][0]
    assert f"fake/weights.bin: {len(WEIGHTS)} bytes" in err  # one line per file off a TTY


# --- doctor ----------------------------------------------------------------------------------


def gpu_checks(config: Config) -> list[doctor.Check]:
    return doctor.check_gpu_models(doctor.DoctorContext(config))


def test_doctor_under_cpu_profile_is_informational(cfg: Config) -> None:
    checks = gpu_checks(cfg)
    assert {c.name for c in checks} == {"gpu model: sdxl-inpaint-0.1", "gpu model: gfpgan-1.4",
                                        "gpu model: buffalo_l"}
    assert all(c.status is doctor.Status.OK and "not used by the cpu profile" in c.detail
               for c in checks)


def test_doctor_under_gpu_profile_reports_missing_models(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = make_config(pipeline={"profile": "gpu"}, models={"dir": str(tmp_path / "m")})
    checks = {c.name: c for c in gpu_checks(config)}
    sdxl = checks["gpu model: sdxl-inpaint-0.1"]
    assert sdxl.status is doctor.Status.ERROR
    assert sdxl.fix == "openeyesctl models fetch sdxl-inpaint-0.1 --trust-on-first-use"
    assert checks["gpu model: gfpgan-1.4"].fix == "openeyesctl models fetch gfpgan-1.4"
    buffalo = checks["gpu model: buffalo_l"]
    assert buffalo.status is doctor.Status.ERROR and "allow_non_commercial" in buffalo.fix


def test_doctor_under_gpu_profile_passes_and_warns_about_licences(
    make_config: Callable[..., Config], tmp_path: Path, server: FakeServer,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    inpaint = fake_spec(server, name="fake-inpaint", role="inpaint")
    landmarks = replace(fake_spec(server, name="buffalo_l", role="landmarks"),
                        commercial_use_allowed=False, licence="research only")
    monkeypatch.setattr(models, "REGISTRY", (inpaint, landmarks))
    config = make_config(pipeline={"profile": "gpu"}, generation={"model": "fake-inpaint"},
                         restoration={"model": "none"},
                         models={"dir": str(tmp_path / "m"), "allow_non_commercial": True})
    install(config, inpaint)
    install(config, landmarks)
    checks = gpu_checks(config)
    assert [c.status for c in checks] == [doctor.Status.OK, doctor.Status.OK,
                                          doctor.Status.WARN]
    assert "buffalo_l (research only)" in checks[-1].detail


def test_doctor_rejects_a_model_of_the_wrong_role(make_config: Callable[..., Config]) -> None:
    config = make_config(pipeline={"profile": "gpu"}, generation={"model": "gfpgan-1.4"})
    check = next(c for c in gpu_checks(config) if c.name == "gpu model: gfpgan-1.4")
    assert check.status is doctor.Status.ERROR and "not inpaint" in check.detail
