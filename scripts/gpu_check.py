"""One unattended GPU check of Hearth, for a rented machine with one NVIDIA GPU and no internet.

Run `scripts/gpu-check` from the repository root. Every stage runs in its own process with its own
timeout, inside one overall budget (default 500 s); a stage that fails or times out does not stop
the next ones, and each stage's output is appended to the report (`$OUT/gpu-check.md`, or --out)
as it arrives, so a killed run still leaves what it got:

  install   `pip install --target` the wheels carried in `.whl/` (transformers 5.24 and the server
            and `transformers serve` packages the machine lacks; torch is the machine's own)
  env       GPU, torch, CUDA and package versions
  tests     `pytest -m gpu tests/test_gpu.py`: the Engine on CUDA, end to end (float32 greedy equals
            transformers on the CPU, bf16 by default with the KV cache on the GPU, 8 concurrent
            requests finish, batched greedy equals solo greedy, CUDA graphs; every lean family's
            tiny model equals transformers; a Q4_K_M GGUF file dequantized on the GPU)
  build     random-weight bf16 models of three families, real shapes over SmolLM2's vocabulary
            (tests/random_llama.py): Llama 1.07 B (hidden 2048, 16 layers, 32/8 heads), Qwen3
            1.5 B (Qwen3-1.7B's 28 layers, 16/8 heads of 128, qk-norm), Gemma 3 0.75 B (Gemma 3
            1B's 26 layers, 4/1 heads of 256, sliding windows of 512)
  compare   greedy tokens of each model (2 prompts, 16 tokens) from transformers on the CPU in
            float32 (the reference), Hearth on the GPU in float32 (with CUDA graphs) and in bf16,
            and transformers on the GPU in bf16: the first divergence from the reference, per prompt
  steps     one stream per model through the Engine, on Hearth's GPU kernels and on torch's ops
            alone (HEARTH_GPU_KERNELS=0): ms per token, the kernels and device time of a replayed
            one-row CUDA graph, and the weights read once per token at the GPU's memory bandwidth
  bench     `scripts/bench.py --concurrency 1,32,64 --max-tokens 128` on those models with CUDA
            graphs (with --eager, once more without them: `cuda_graphs: false`); with --peer, also
            `transformers serve --continuous-batching --device cuda --dtype bfloat16` on the Llama

Not part of the check: `scripts/gpu-check stage graphs --models DIR` profiles a model's replayed
one-row decode graph (kernels per step, the ten costliest) and times the same step compiled by
torch.compile before capture (docs/gpu-check-h200.md, last section).

Why random weights: a device call carries at most 64 MiB, and the embedded SmolLM2 model is
98 MB as GGUF and 540 MB as float32 safetensors. So the models are built from a config with a
fixed seed (tests/random_llama.py), once per run, and loaded from that folder by every side of
a comparison; the SmolLM2 tokenizer files (3.5 MB) are carried in `.gpu-assets/tokenizer/`.
Special-token embedding rows are zeroed, so greedy decoding never emits an end token and every
request runs to max_tokens on both servers.

Before renting the machine, once, here (needs internet; fills the git-ignored `.whl/` and
`.gpu-assets/`, about 35 MB):   scripts/gpu-check prepare
with `--llama-cpp DIR` (a built llama.cpp source tree, and `--convert-python PY` with sentencepiece),
it also writes `.gpu-assets/gguf/tiny-q4_k_m.gguf` (13 MB): a random Llama (hidden 256, 4 layers)
converted and quantized by llama.cpp, for the GGUF tests of tests/test_gpu.py.
Check the code paths on a CPU (tiny models, concurrency 1,2, about 3 minutes on 2 cores):
                                scripts/gpu-check --device cpu --small --out /tmp/gpu-check.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("llama", "qwen3", "gemma3")  # the random models the check builds and benches
WHEELS = ROOT / ".whl"
ASSETS = ROOT / ".gpu-assets"
GGUF_ASSET = ASSETS / "gguf" / "tiny-q4_k_m.gguf"
SITE = Path("/tmp/hearth-gpu-site")
# tests/test_docs.py runs every block of docs/ or reads why not on the line before it
OUTPUT_MARK = "<!-- not tested: the output of the command above, on the GPU machine -->"
LOG_MARK = "<!-- not tested: the tail of a server log of the run above -->"

# What the GPU image lacks or has in another version than Hearth is tested with (see
# .library/device/KINDS.md: it has torch 2.11, transformers 5.17, huggingface_hub 1.33, tokenizers
# 0.23.2, safetensors 0.8, accelerate 1.15, numpy, pyyaml, jinja2, httpx, rich, pytest; no
# starlette, uvicorn, pydantic, fastapi, openai). Pinned to the versions of this repo's .venv.
WHEEL_PINS = (
    "transformers==5.24.0",
    "huggingface_hub==2.4.0",
    "hf-xet==1.8.0",
    "httpx2==2.16.2",
    "httpcore2==2.16.2",
    "truststore==0.10.5",
    "idna==3.20",
    "anyio==4.16.0",
    "h11==0.16.0",
    "sniffio==1.3.1",
    "click==8.5.1",
    "typer==0.29.2",
    "regex==2026.11.19",
    "typing_extensions==4.16.0",
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "gguf==0.19.0",
    "prometheus-client==0.26.0",
    "fastapi==0.165.0",  # transformers serve
    "annotated-doc==0.0.7",
    "opentelemetry-api==1.45.2",
    "openai==3.57.0",  # transformers serve, tests/conftest.py
    "jiter==0.19.0",
    "llguidance==1.9.1",  # engine/sampling/grammar.py
    "torchao==0.18.0",  # engine/model/quantize.py
)
PLATFORMS = (
    "manylinux_2_31_x86_64",  # llguidance
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


# ---------------------------------------------------------------- report


class Report:
    """The markdown file every stage appends to, line by line; everything is echoed to stdout."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(text)
        sys.stdout.write(text)
        sys.stdout.flush()


@dataclass
class Outcome:
    name: str
    status: str  # ok | FAILED (rc N) | TIMEOUT | skipped: why
    seconds: float = 0.0


def run_stage(report: Report, name: str, cmd: list[str], timeout: float, env: dict[str, str]) -> Outcome:
    """Run `cmd` in its own process group, streaming its output into the report; TERM, KILL at timeout."""
    shown = shlex.join(cmd)
    shown = shown if len(shown) < 400 else shown[:400] + " ..."
    report.write(f"\n## {name}\n\n`{shown}` (timeout {timeout:.0f} s)\n\n{OUTPUT_MARK}\n```\n")
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    reader = threading.Thread(target=_pump, args=(proc.stdout, report), daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else f"FAILED (rc {rc})"
    except subprocess.TimeoutExpired:
        status = "TIMEOUT"
        _kill_group(proc, grace=20.0)  # bench.py stops its servers on TERM
    reader.join(timeout=10)
    seconds = time.monotonic() - start
    report.write(f"```\n\n**{name}: {status}** in {seconds:.0f} s\n")
    return Outcome(name, status, seconds)


def _pump(stream: IO[str], report: Report) -> None:
    for line in stream:
        report.write(line)


def _kill_group(proc: subprocess.Popen[str], grace: float) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------- the check


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="default: %(default)s")
    p.add_argument("--small", action="store_true", help="tiny models, concurrency 1,2, 16 tokens")
    p.add_argument(
        "--out", type=Path, help="report file (default: $OUT/gpu-check.md, else /tmp/gpu-check.md)"
    )
    p.add_argument("--budget", type=float, help="seconds for all stages (default: 330, --small 170)")
    p.add_argument("--install", choices=("auto", "yes", "no"), default="auto",
                   help="pip install .whl/ into a --target dir (auto: when not run from .venv)")  # fmt: skip
    p.add_argument("--wheels", type=Path, default=WHEELS, help="wheel folder (default: .whl)")
    p.add_argument("--concurrency", help="bench levels (default: 1,8,32,64; --small 1,2)")
    p.add_argument("--max-tokens", type=int, help="bench tokens per request (default: 128; --small 16)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (models, bench logs)")
    p.add_argument("--peer", action="store_true", help="also bench `transformers serve` on the Llama")
    p.add_argument("--eager", action="store_true", help="also bench each model without CUDA graphs")
    args = p.parse_args(argv)
    if args.out is None:
        args.out = Path(os.environ.get("OUT") or tempfile.gettempdir()) / "gpu-check.md"
    args.budget = args.budget or (240.0 if args.small else 500.0)
    args.concurrency = args.concurrency or ("1,2" if args.small else "1,32,64")
    args.max_tokens = args.max_tokens or (16 if args.small else 128)
    return args


def stage_env(args: argparse.Namespace, site: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TQDM_DISABLE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        HEARTH_TEST_DEVICE=args.device,
    )
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    return env


def should_install(args: argparse.Namespace) -> bool:
    if args.install != "auto":
        return args.install == "yes"
    in_repo_venv = Path(sys.prefix).resolve().parent == ROOT
    return not in_repo_venv and any(args.wheels.glob("*.whl"))


def write_catalog(work: Path, model_dirs: list[Path], args: argparse.Namespace) -> Path:
    """A models.yaml with each model twice: `<folder name>` and `<folder name>-eager` (no CUDA graphs)."""
    dtype = "float32" if args.device == "cpu" else "bfloat16"
    path = work / "models.yaml"
    lines = [f"default: {model_dirs[0].name}", f"cache_dir: {work / 'cache'}", "models:"]
    for model_dir in model_dirs:
        for suffix, graphs in (("", "true"), ("-eager", "false")):
            lines += [
                f"  - id: {model_dir.name}{suffix}",
                f"    source: {model_dir}",
                f"    dtype: {dtype}",
                f"    device: {args.device}",
                "    max_context: 2048",
                "    max_batch_size: 64",
                f"    cuda_graphs: {graphs}",
            ]
    path.write_text("\n".join(lines) + "\n")
    return path


def append_logs(report: Report, logs: list[Path], lines: int = 25) -> None:
    """The last `lines` lines of each server log, so a crash on the device shows its cause."""
    for log in logs:
        text = log.read_text(errors="replace").splitlines()[-lines:]
        report.write(f"\n### tail of {log.name}\n\n{LOG_MARK}\n```\n" + "\n".join(text) + "\n```\n")


def check(args: argparse.Namespace) -> int:
    report = Report(args.out)
    deadline = time.monotonic() + args.budget
    work = Path(tempfile.mkdtemp(prefix="hearth-gpu-check-"))
    py = sys.executable
    big = "tiny" if args.small else "1b"
    report.write(
        f"# Hearth GPU check\n\n{time.strftime('%Y-%m-%d %H:%M:%S')}; device {args.device}, "
        f"{'small' if args.small else 'full'} mode, budget {args.budget:.0f} s, work folder {work}\n"
    )
    outcomes: list[Outcome] = []
    site: Path | None = None

    def stage(name: str, cmd: list[str], cap: float, **extra_env: str) -> Outcome:
        left = deadline - time.monotonic()
        if left < 10:
            outcome = Outcome(name, "skipped: budget spent")
            report.write(f"\n## {name}\n\n**{name}: {outcome.status}**\n")
        else:
            env = {**stage_env(args, site), **extra_env}
            outcome = run_stage(report, name, cmd, min(cap, left), env)
        outcomes.append(outcome)
        return outcome

    if should_install(args):
        SITE.mkdir(parents=True, exist_ok=True)
        wheels = sorted(str(w) for w in args.wheels.glob("*.whl"))
        pip = [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir"]
        if stage("install", [*pip, "--upgrade", "--target", str(SITE), *wheels], 120).status == "ok":
            site = SITE
    stage("env", [py, "-m", "scripts.gpu_check", "stage", "env"], 150)  # builds the CPU kernels
    stage(
        "tests",
        [py, "-m", "pytest", "-m", "gpu", "-q", "-rsx", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        240,
    )
    built: list[Path] = []
    for family in FAMILIES:
        model_dir = work / f"{family}-{big}"
        build = [py, "-m", "scripts.gpu_check", "stage", "build", "--device", args.device, "--size", big]
        if stage(f"build {family}", [*build, "--family", family, "--out", str(model_dir)], 60).status == "ok":
            built.append(model_dir)
    if not built:
        outcomes.append(Outcome("bench", "skipped: no model"))
    else:
        compare = [py, "-m", "scripts.gpu_check", "stage", "compare", "--device", args.device]
        stage("compare", [*compare, "--tokens", "16", "--prompts", "2", "--models", *map(str, built)], 120)
        steps = [py, "-m", "scripts.gpu_check", "stage", "steps", "--device", args.device]
        stage("steps", [*steps, "--tokens", str(args.max_tokens), "--models", *map(str, built)], 120)
        catalog = write_catalog(work, built, args)
        ids = ",".join(f"{d.name}{suffix}" for d in built for suffix in ("", "-eager")[: 1 + args.eager])
        bench = [
            py, "scripts/bench.py", "--concurrency", args.concurrency,
            "--max-tokens", str(args.max_tokens), "--hearth-config", str(catalog),
            "--model", ids, "--hearth-dtype", "catalog", "--hearth-python", py,
            "--json", str(work / "bench.json"),
        ]  # fmt: skip
        stage("bench", bench, 300, TMPDIR=str(work))  # the servers' logs land in `work`
        append_logs(report, sorted(work.glob("hearth-bench-*.log")))
        if args.peer:
            venv_peer = ROOT / ".venv-peer" / "bin" / "python"  # no transformers[serving] in .venv
            peer_py = venv_peer if site is None and venv_peer.exists() else Path(py)
            peer = [
                py, "scripts/bench.py", "--compare", "--concurrency", args.concurrency,
                "--max-tokens", str(args.max_tokens), "--hearth-config", str(catalog),
                "--model", built[0].name, "--hearth-dtype", "catalog", "--hearth-python", py,
                "--model-dir", str(built[0]), "--peer-python", str(peer_py), "--peer-device", args.device,
                "--peer-dtype", "float32" if args.device == "cpu" else "bfloat16",
            ]  # fmt: skip
            stage("peer", peer, 300, TMPDIR=str(work))

    report.write("\n## Summary\n\n| stage | result | seconds |\n|---|---|---:|\n")
    for o in outcomes:
        report.write(f"| {o.name} | {o.status} | {o.seconds:.0f} |\n")
    if args.keep:
        report.write(f"\nwork folder kept: {work}\n")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(o.status == "ok" for o in outcomes) else 1


# ---------------------------------------------------------------- preparation (here, with internet)


def prepare(argv: Sequence[str]) -> int:
    """Download the pinned wheels for the GPU image's Python 3.12 into .whl/ and copy the tokenizer;
    with --llama-cpp, write the GGUF asset too."""
    from tests.random_llama import copy_tokenizer, find_tokenizer_dir

    p = argparse.ArgumentParser(prog="scripts/gpu-check prepare")
    p.add_argument("--llama-cpp", type=Path, help="a llama.cpp source tree with build/bin/llama-quantize")
    p.add_argument("--convert-python", default=sys.executable, help="python for convert_hf_to_gguf.py")
    args = p.parse_args(argv)

    WHEELS.mkdir(exist_ok=True)
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    cmd += ["--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(WHEELS), *WHEEL_PINS]
    subprocess.run(cmd, check=True)
    wanted = tuple(f"{pin.lower().replace('-', '_').replace('==', '-')}-" for pin in WHEEL_PINS)
    for wheel in WHEELS.glob("*.whl"):
        if not wheel.name.lower().startswith(wanted):
            print(f"removing {wheel.name}: not in WHEEL_PINS (two versions of a package stop the install)")
            wheel.unlink()
    tokenizer = find_tokenizer_dir()
    if tokenizer is None:
        print("no SmolLM2 tokenizer found: start Hearth once (scripts/serve) to convert the model")
        return 1
    if tokenizer != ASSETS / "tokenizer":
        copy_tokenizer(tokenizer, ASSETS / "tokenizer")
    if args.llama_cpp is not None:
        write_gguf_asset(args.llama_cpp, args.convert_python, ASSETS / "tokenizer")
    total = sum(f.stat().st_size for d in (WHEELS, ASSETS) for f in d.rglob("*") if f.is_file())
    print(
        f"{len(list(WHEELS.glob('*.whl')))} wheels in .whl, tokenizer in .gpu-assets: {total / 2**20:.1f} MiB"
    )
    return 0


def write_gguf_asset(llama_cpp: Path, python: str, tokenizer: Path) -> None:
    """`GGUF_ASSET`: tests/test_gpu.py's random Llama, converted to GGUF and quantized by llama.cpp."""
    from scripts.random_model import convert_to_gguf, quantize_gguf
    from tests.random_llama import build_random_model, llama_config
    from tests.test_gpu import GGUF_SIZE

    with tempfile.TemporaryDirectory(prefix="hearth-gguf-") as tmp:
        model = build_random_model(Path(tmp) / "model", tokenizer, llama_config(GGUF_SIZE))
        f32 = convert_to_gguf(llama_cpp, python, model, Path(tmp) / "f32.gguf", "f32")
        quantize_gguf(llama_cpp, f32, GGUF_ASSET, "Q4_K_M")
    print(f"{GGUF_ASSET.relative_to(ROOT)}: {GGUF_ASSET.stat().st_size / 2**20:.1f} MiB")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        return prepare(argv[1:])
    if argv[:1] == ["stage"]:
        from scripts.gpu_stages import run_stage_command

        return run_stage_command(argv[1:])
    return check(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
